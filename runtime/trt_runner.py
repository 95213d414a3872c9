"""TensorRT runners: `TrtTargetRunner` and `TrtDraftRunner`, the same interface as the onnxruntime ones.

Place in the data flow: `dream-s-edge build-engines` -> `<graph>_<precision>.engine` + manifest
`engines.<precision>` -> `TrtGraph` (one execution context per optimization profile) -> runners ->
`runtime/decode.py`. `tensorrt` is imported inside `trt()` only, CUDA goes through
`runtime/cuda_memory.py` (no torch), so `import runtime.trt_runner` works on a CPU box.

Buffers of the target, allocated once in the constructor (C = max_context, N = node_budget):

  [1] KV cache `DeviceKV` K/V `[L, C + N, Hkv, D]` in device memory; graphs read the committed
      prefix by pointer; `commit` compacts the accepted path on the device (2D copies).
  [2] inputs: embeds `[C, H]`, positions `[C]`, additive mask (largest of prefill and verify).
  [3] outputs: logits `[N, V]` (the decoder returns at most N rows), features `[C, F]`; with
      `stage_kv` also a staging K/V `[L, N, Hkv, D]` for the new tokens.
  [4] vision: pixels `[I, 3, s, s]`, image embeds `[I, tokens, H]` (I = MAX_IMAGES).

Tensor addresses are set through `TensorBindings` (only on change). With `cuda_graphs=True` a
verify writes its new K/V into the staging buffer and hands the graph a past length rounded up to
`past_bucket` (extra slots hidden by the mask), so shapes and addresses repeat for a bucket's worth
of steps and `TrtGraph` replays a captured CUDA graph; the staged K/V go to their slots by one 2D
copy per K and V. Results handed back are host copies.
"""

from __future__ import annotations

import logging

import numpy as np

from runtime.cuda_memory import D2D, CudaApi, DeviceArray, DeviceKV
from runtime.embedding import embed_prompt, lookup
from runtime.errors import CapacityError, EngineError
from runtime.manifest import Manifest
from runtime.ort_draft import OrtDraftRunner
from runtime.runner import PrefillResult, Prompt, RunnerLimits, VerifyResult
from runtime.trt_engines import DeviceInfo, TensorBindings, check_engine_compat, engine_section, pick_profile

logger = logging.getLogger(__name__)

MASK_MIN = float(np.finfo(np.float32).min)
MAX_IMAGES = 2
GRAPH_CACHE = 64  # captured CUDA graphs kept per engine


def trt():
    """The tensorrt module, imported on first use."""
    try:
        import tensorrt
    except ImportError as error:
        raise EngineError("TensorRT is not installed.", hint="pip install 'dream-s-edge[trt]' on a device with a GPU") from error
    return tensorrt


def device_here(api) -> DeviceInfo:
    """TensorRT version, GPU name and compute capability of this machine (device 0)."""
    name, cc = api.device_name_and_cc(0)
    return DeviceInfo(trt().__version__, name, cc)


def contract_names(contract: dict, side: str, role: str) -> list[str]:
    """Names of the contract's tensors with `role` on `side`, in layer order."""
    found = [t for t in contract[side] if t["role"] == role]
    return [t["name"] for t in sorted(found, key=lambda t: t.get("layer") or 0)]


def contract_name(contract: dict, side: str, role: str) -> str | None:
    found = contract_names(contract, side, role)
    return found[0] if found else None


class TrtGraph:
    """One engine: an execution context per optimization profile, bindings set only on change.

    Args:
        name: the graph ("decoder", ...), for messages.
        contexts: one execution context per profile, in the manifest's profile order.
        profiles: the manifest's profile entries (axes per profile).
        api, stream: the memory API and the stream every call is enqueued on.
        cuda_graphs: replay a captured CUDA graph when a call repeats shapes and addresses
            (captured on its second occurrence, after one plain run did TensorRT's lazy setup).
    """

    def __init__(self, name: str, contexts: list, profiles: list[dict], api, stream, cuda_graphs: bool = False):
        if len(contexts) != len(profiles):
            raise EngineError(f"The {name} engine has another number of profiles than the manifest.",
                              note=f"engine {len(contexts)}, manifest {len(profiles)}")
        self.name, self.contexts, self.profiles = name, contexts, profiles
        self.bindings = [TensorBindings(c) for c in contexts]
        self.api, self.stream, self.cuda_graphs = api, stream, cuda_graphs and getattr(api, "kind", "") == "cuda"
        self._seen: dict[tuple, int] = {}  # call key -> CUDA graph exec (0: seen once, not captured)
        self.launches = 0  # graph replays (for tests and profiling)

    @classmethod
    def load(cls, manifest: Manifest, section: dict, graph: str, api, stream, cuda_graphs: bool = False) -> TrtGraph:
        """Deserializes `section["graphs"][graph]` and makes one context per profile."""
        rt = trt()
        entry = section["graphs"][graph]
        path = manifest.path(entry["file"])
        runtime = rt.Runtime(rt.Logger(rt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineError(f"TensorRT could not load the {graph} engine {path}.",
                              hint=f"rebuild: dream-s-edge build-engines --artifacts {manifest.folder} "
                                   f"--precision {section['precision']}")
        contexts = []
        for i in range(engine.num_optimization_profiles):
            context = engine.create_execution_context()
            if not context.set_optimization_profile_async(i, stream):
                raise EngineError(f"Could not select profile {i} of the {graph} engine.")
            contexts.append(context)
        graph_obj = cls(graph, contexts, entry["profiles"], api, stream, cuda_graphs)
        graph_obj.engine, graph_obj.runtime = engine, runtime  # keep them alive as long as the contexts
        return graph_obj

    def run(self, sizes: dict[str, int], shapes: dict[str, tuple], addresses: dict[str, int]) -> None:
        """Picks the profile for `sizes`, sets changed shapes and addresses, enqueues the engine."""
        index = pick_profile(self.profiles, sizes, self.name)
        bindings = self.bindings[index]
        for name, shape in shapes.items():
            bindings.shape(name, shape)
        for name, ptr in addresses.items():
            bindings.address(name, ptr)
        self._execute(index, bindings)

    def _execute(self, index: int, bindings: TensorBindings) -> None:
        context = self.contexts[index]
        if not self.cuda_graphs:
            self._enqueue(context)
            return
        key = (index, tuple(sorted(bindings.shapes.items())), tuple(sorted(bindings.addresses.items())))
        exec_ = self._seen.get(key)
        if exec_ is None:  # first time: a plain run (TensorRT allocates lazily on the first enqueue)
            self._enqueue(context)
            self._seen[key] = 0
            self._evict()
            return
        if exec_ == 0:
            self.api.begin_capture(self.stream)
            self._enqueue(context)
            exec_ = self._seen[key] = self.api.end_capture(self.stream)
        self.api.graph_launch(exec_, self.stream)
        self.launches += 1

    def _enqueue(self, context) -> None:
        if not context.execute_async_v3(self.stream):
            raise EngineError(f"TensorRT failed to run the {self.name} engine (execute_async_v3).")

    def _evict(self) -> None:
        while len(self._seen) > GRAPH_CACHE:
            key = next(iter(self._seen))
            exec_ = self._seen.pop(key)
            if exec_:
                self.api.graph_destroy(exec_)

    def attach_profiler(self) -> dict[str, list[float]]:
        """Per-layer times of every later run, from TensorRT's IProfiler: returns {layer: [ms, ...]}.

        With `enqueue_emits_profile` (TensorRT's default) each `execute_async_v3` reports every
        layer (named as in the ONNX graph: engines are built with DETAILED profiling verbosity)
        before it returns. The dict fills as runs go. Profiled runs are slower: time nothing
        while a profiler is attached, and `detach_profiler` afterwards.

        Raises:
            EngineError: the graph replays CUDA graphs (replays report nothing without
                `report_to_profiler`, and capture with a profiler attached is not supported).
        """
        if self.cuda_graphs:
            raise EngineError(f"Per-layer profiling of the {self.name} engine needs cuda_graphs=False.",
                              hint="build the runners without CUDA graphs to profile layers")
        rt = trt()
        times: dict[str, list[float]] = {}

        class LayerTimes(rt.IProfiler):
            def __init__(self):
                rt.IProfiler.__init__(self)  # pybind11 trampoline: the base must be initialised explicitly

            def report_layer_time(self, layer_name, ms):
                times.setdefault(str(layer_name), []).append(float(ms))

        profiler = LayerTimes()
        for context in self.contexts:
            context.enqueue_emits_profile = True
            context.profiler = profiler
        self._profiler = profiler  # the contexts hold a raw pointer: keep the object alive
        return times

    def detach_profiler(self) -> None:
        """Stops per-layer reporting (runs are full speed again)."""
        for context in self.contexts:
            context.profiler = None
        self._profiler = None


def _load_graphs(manifest: Manifest, precision, names, api, stream, cuda_graphs) -> dict[str, TrtGraph]:
    section = engine_section(manifest.data, precision)
    check_engine_compat(section, device_here(api), manifest.folder)
    return {g: TrtGraph.load(manifest, section, g, api, stream, cuda_graphs) for g in names if g in section["graphs"]}


def _additive(visible: np.ndarray) -> np.ndarray:
    """bool [n, W] -> float32 [n, W] (0 visible, float32 min hidden)."""
    return np.where(visible, np.float32(0.0), np.float32(MASK_MIN)).astype(np.float32)


class TrtTargetRunner:
    """The target on TensorRT (implements `runtime.runner.TargetRunner`).

    Args:
        manifest: the validated manifest, with an `engines` section built on this device.
        precision: which engines ("fp16", ...); None takes the only one built.
        cuda_graphs: capture and replay CUDA graphs for verify (implies `stage_kv`).
        past_bucket: with staging, past lengths handed to the graph are rounded up to this.
        stage_kv: write new K/V into a staging buffer and copy them to their slots (see module doc).
        api: the memory API (default `CudaApi()`); graphs: prebuilt {name: TrtGraph} (tests).

    Raises:
        EngineError / ManifestError: no engines, or engines built by another TensorRT or for another GPU.
    """

    def __init__(self, manifest: Manifest, precision: str | None = None, cuda_graphs: bool = False,
                 past_bucket: int = 64, stage_kv: bool | None = None, api=None, graphs: dict | None = None):
        target, limits = manifest["target"], manifest["limits"]
        self.limits = RunnerLimits(int(limits["max_context"]), int(limits["node_budget"]))
        self.vocab_size = int(target["vocab_size"])
        self.hidden = int(target["hidden_size"])
        self.feature_dim = self.hidden * len(manifest["feature_layers"])
        self.image_token_id = target.get("image_token_id")
        self.embeddings = np.load(manifest.path("embeddings"), mmap_mode="r")  # [V, H]
        self.api = api if api is not None else CudaApi()
        self.stream = self.api.stream_create()
        graphs = graphs if graphs is not None else _load_graphs(manifest, precision, ("decoder", "vision"), self.api,
                                                                self.stream, cuda_graphs)
        self.decoder, self.vision = graphs["decoder"], graphs.get("vision")
        contract = manifest.contract("decoder")
        self._names = {role: contract_names(contract, side, role) for side, role in (
            ("inputs", "past_key"), ("inputs", "past_value"), ("outputs", "present_key"), ("outputs", "present_value"))}
        for side, role in (("inputs", "inputs_embeds"), ("inputs", "position_ids"), ("inputs", "attention_mask"),
                           ("outputs", "logits"), ("outputs", "features")):
            self._names[role] = contract_name(contract, side, role)
        self.stage_kv = cuda_graphs if stage_kv is None else stage_kv
        self.past_bucket = max(int(past_bucket), 1) if self.stage_kv else 1
        self._allocate(manifest, target)

    def _allocate(self, manifest: Manifest, target: dict) -> None:
        api, C, N = self.api, self.limits.max_context, self.limits.node_budget
        layers, heads, dim = int(target["num_layers"]), int(target["num_kv_heads"]), int(target["head_dim"])
        self.cache = DeviceKV(api, layers, C + N, heads, dim, self.stream)  # [1]
        self._embeds = DeviceArray(api, (C, self.hidden))  # [2]
        self._positions = DeviceArray(api, (C,), np.int64)
        self._mask = DeviceArray(api, (max(C * C, N * (C + N)),))
        self._logits = DeviceArray(api, (N, self.vocab_size))  # [3]
        self._features = DeviceArray(api, (C, self.feature_dim))
        self._stage = (DeviceArray(api, (layers, N, heads, dim)), DeviceArray(api, (layers, N, heads, dim))) \
            if self.stage_kv else None
        self._pixels = self._image = None
        if self.vision is not None:  # [4]
            vision = manifest.contract("vision")
            pixel_shape = vision["inputs"][0]["shape"][1:]
            image_shape = vision["outputs"][0]["shape"][1:]
            self._pixels = DeviceArray(api, (MAX_IMAGES, *pixel_shape))
            self._image = DeviceArray(api, (MAX_IMAGES, *image_shape))
            self._vision_names = (vision["inputs"][0]["name"], vision["outputs"][0]["name"])

    @property
    def length(self) -> int:
        return self.cache.length

    def reset(self) -> None:
        self.cache.reset()

    def prefill(self, prompt: Prompt) -> PrefillResult:
        """Consumes a prompt, produces its last logits and per-position features; commits T tokens."""
        self.reset()
        ids = np.asarray(prompt.input_ids, dtype=np.int64)
        count = int(ids.shape[0])
        if count > self.limits.max_context:
            raise CapacityError("The prompt does not fit the target's KV cache.",
                                note=f"{count} tokens, max_context {self.limits.max_context}")
        embeds = self._embed(ids, prompt.extras.get("pixel_values"))
        logits, features = self._step(embeds, np.arange(count, dtype=np.int64), np.tril(np.ones((count, count), bool)))
        self.cache.length = count
        visual = None if self.image_token_id is None else ids == self.image_token_id
        return PrefillResult(logits=logits[-1].copy(), features=features, inputs_embeds=embeds,
                             visual_mask=visual if visual is not None and visual.any() else None)

    def verify(self, tokens: np.ndarray, positions: np.ndarray, tree_mask: np.ndarray) -> VerifyResult:
        """Consumes N tree nodes, produces their logits [N, V] and features [N, F] (host copies)."""
        count = int(np.shape(tokens)[0])
        if count > self.limits.node_budget:
            raise CapacityError("The tree has more nodes than the target's buffers were sized for.",
                                note=f"{count} nodes, node budget {self.limits.node_budget}")
        embeds = self._lookup(np.asarray(tokens, dtype=np.int64))
        logits, features = self._step(embeds, np.asarray(positions, dtype=np.int64), np.asarray(tree_mask, bool))
        return VerifyResult(logits=logits, features=features)

    def commit(self, accepted: np.ndarray) -> None:
        """Compacts the accepted nodes' K/V on the device, after the committed slots."""
        self.cache.commit(np.asarray(accepted, dtype=np.int64), self.cache.length)

    # ---- internals --------------------------------------------------------------------------
    def _lookup(self, ids: np.ndarray) -> np.ndarray:
        """Token embeddings [T, H] float32 from the exported table."""
        return lookup(self.embeddings, ids)

    def _embed(self, ids: np.ndarray, pixel_values: np.ndarray | None) -> np.ndarray:
        """Token embeddings with the image embeddings spliced in at the image tokens: [T, H]."""
        encode = self.encode_images if self.vision is not None else None
        return embed_prompt(self.embeddings, ids, self.image_token_id, pixel_values, encode, "engines")

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """pixel_values [I, 3, s, s] -> image embeds [I, tokens, H] through the vision engine."""
        count = pixels.shape[0]
        if count > MAX_IMAGES:
            raise CapacityError("Too many images for the vision engine.", note=f"{count} > {MAX_IMAGES}")
        pixel_name, image_name = self._vision_names
        self._pixels.write(pixels, stream=self.stream)
        self.vision.run({"images": count}, {pixel_name: pixels.shape},
                        {pixel_name: self._pixels.ptr, image_name: self._image.ptr})
        return self._image.read((count, *self._image.shape[1:]), stream=self.stream)

    def _step(self, embeds: np.ndarray, positions: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One decoder pass over T tokens at slots length .. length + T - 1 -> (logits [R, V], features [T, F])."""
        past, count = self.cache.length, embeds.shape[0]
        cache, names, stream = self.cache, self._names, self.stream
        cache.check_room(past, count)
        staged = self._stage is not None and count <= self.limits.node_budget
        graph_past = min(-(-past // self.past_bucket) * self.past_bucket, self.limits.max_context) if staged else past
        mask = np.zeros((count, graph_past + count), dtype=np.float32)
        mask[:, past:graph_past] = MASK_MIN  # bucket padding: slots not committed yet
        mask[:, graph_past:] = _additive(block)
        self._embeds.write(embeds, stream=stream)
        self._positions.write(positions, stream=stream)
        self._mask.write(mask, stream=stream)
        shapes = {names["inputs_embeds"]: (1, count, self.hidden), names["position_ids"]: (1, count),
                  names["attention_mask"]: (1, 1, count, graph_past + count)}
        addresses = {names["inputs_embeds"]: self._embeds.ptr, names["position_ids"]: self._positions.ptr,
                     names["attention_mask"]: self._mask.ptr, names["logits"]: self._logits.ptr,
                     names["features"]: self._features.ptr}
        kv_row = cache.heads * cache.dim
        for layer in range(cache.layers):
            for role, buf in (("past_key", cache.k), ("past_value", cache.v)):
                shapes[names[role][layer]] = (1, graph_past, cache.heads, cache.dim)
                addresses[names[role][layer]] = buf.at(cache.offset(layer, 0))
            for i, role in enumerate(("present_key", "present_value")):
                if staged:
                    addresses[names[role][layer]] = self._stage[i].at(layer * self.limits.node_budget * kv_row)
                else:
                    addresses[names[role][layer]] = (cache.k, cache.v)[i].at(cache.offset(layer, past))
        self.decoder.run({"new": count, "past": graph_past}, shapes, addresses)
        if staged:  # staged K/V [L, n, Hkv, D] -> slots past .. past + n - 1 of every layer
            row = kv_row * 4
            for src, dst in zip(self._stage, (cache.k, cache.v), strict=True):
                self.api.memcpy2d(dst.at(cache.offset(0, past)), cache.slots * row, src.ptr,
                                  self.limits.node_budget * row, count * row, cache.layers, D2D, stream)
        rows = min(count, self.limits.node_budget)
        logits = self._logits.read((rows, self.vocab_size), stream=stream)
        return logits, self._features.read((count, self.feature_dim), stream=stream)


class TrtDraftRunner(OrtDraftRunner):
    """The draft on TensorRT (implements `runtime.runner.DraftRunner`), all state in device memory.

    Host-side logic (masks, layout, the one-step shift, tree bookkeeping) is `OrtDraftRunner`'s;
    this class replaces its buffers and graph calls. Buffers (C = max_context, S = scratch slots):

      [1] self-attention K/V `DeviceKV [B, S + C + 1, Hkv, D]`; tree levels write into `[B, S, Hkv, D]`
          and are moved into their scratch slots on the device.
      [2] feature memory: "cross_attention" K/V `[S + 2 + C, Hkv, D]` on the device (the memory
          graph writes target features straight into their entries); "concat" vectors on the host.
      [3] inputs (embeds, previous, positions, masks) and outputs (top-k, memory rows), max-sized.

    Args: as `TrtTargetRunner`, plus `embeddings` [V, H_t] (the target's table).
    """

    padded_steps = True  # fixed tree-step widths: one shape per level, as the engine's profile and CUDA graphs want

    def __init__(self, manifest: Manifest, embeddings: np.ndarray, precision: str | None = None,
                 cuda_graphs: bool = False, api=None, graphs: dict | None = None):
        self._configure(manifest, embeddings)
        self.api = api if api is not None else CudaApi()
        self.stream = self.api.stream_create()
        graphs = graphs if graphs is not None else _load_graphs(manifest, precision, ("draft_step", "draft_memory"),
                                                                self.api, self.stream, cuda_graphs)
        self.step, self.memory_graph = graphs["draft_step"], graphs.get("draft_memory")
        self._contract = manifest.contract("draft_step")
        self._memory_contract = manifest.contract("draft_memory") if self.memory_graph is not None else None
        self._allocate_device(manifest)

    def _allocate_device(self, manifest: Manifest) -> None:
        api, S, C = self.api, self.limits.node_budget, self.limits.max_context
        heads, dim, blocks = self._heads, self._dim, self._blocks
        self.cache = DeviceKV(api, blocks, S + C + 1, heads, dim, self.stream)  # [1]
        self._tree = (DeviceArray(api, (blocks, S, heads, dim)), DeviceArray(api, (blocks, S, heads, dim)))
        self._mem_k = self._mem_v = self._mem_vec = None  # [2]
        if self.interaction == "cross_attention":
            self._mem_k = DeviceArray(api, (self._mem_width, heads, dim))
            self._mem_v = DeviceArray(api, (self._mem_width, heads, dim))
            self._mem_k.write(np.load(manifest.path("draft_null_key")), stream=self.stream)
            self._mem_v.write(np.load(manifest.path("draft_null_value")), stream=self.stream)
        elif self.interaction == "concat":
            self._mem_vec = np.zeros((self._mem_width, self._width), dtype=np.float32)
            self._mem_vec[0] = np.load(manifest.path("draft_null_feature"))
        rows = C + 1  # the longest call: the prefill chain (prompt + root)
        width = S + C + 1 + rows
        spec = manifest["draft"]["spec"]
        target_hidden = int(spec["target_hidden_size"])
        self._in = {"inputs_embeds": DeviceArray(api, (rows, target_hidden)),  # [3]
                    "previous": DeviceArray(api, (rows, self._width)),
                    "position_ids": DeviceArray(api, (rows,), np.int64),
                    "self_mask": DeviceArray(api, (rows * width,)),
                    "memory_mask": DeviceArray(api, (rows * self._mem_width,)),
                    "features": DeviceArray(api, (rows, self.feature_dim))}
        K = self.top_k_max
        mem_row = (heads, dim) if self.interaction == "cross_attention" else (self._width,)
        self._out = {"topk_logprobs": DeviceArray(api, (rows, K)), "topk_ids": DeviceArray(api, (rows, K), np.int64),
                     "memory_out_key": DeviceArray(api, (rows, *mem_row)),
                     "memory_out_value": DeviceArray(api, (rows, *mem_row)),
                     "memory_out": DeviceArray(api, (rows, *mem_row))}

    def _name(self, side: str, role: str) -> str | None:
        return contract_name(self._contract, side, role)

    def _run(self, embeds, previous, positions, visible, mem_visible, past, write_slot, top_k, graph=None) -> dict:
        """One draft_step call on the device; new K/V go to committed slots from `write_slot`, or
        (None) to the tree buffers. Returns {"logprobs", "ids", "memory": ("device", n)}.

        `graph` is ignored: the engines are built from draft_step only, so chains run on it too.
        """
        cache, stream, n = self.cache, self.stream, positions.size
        shapes, addresses, sizes = {}, {}, {"new": n, "past": past}
        feeds = {"inputs_embeds": (embeds.astype(np.float32), (1, n, embeds.shape[1])),
                 "position_ids": (positions.astype(np.int64), (n,)),
                 "self_mask": (_additive(visible), (1, 1, n, visible.shape[1]))}
        if previous is not None:
            feeds["previous"] = (previous[0].astype(np.float32), (1, n, previous.shape[-1]))
        if self._mem_k is not None:
            width = mem_visible.shape[1]
            sizes["memory"] = width
            feeds["memory_mask"] = (_additive(mem_visible), (1, 1, n, width))
            for role, buf in (("memory_key", self._mem_k), ("memory_value", self._mem_v)):
                shapes[self._name("inputs", role)] = (1, width, cache.heads, cache.dim)
                addresses[self._name("inputs", role)] = buf.ptr
        for role, (array, shape) in feeds.items():
            self._in[role].write(array, stream=stream)
            shapes[self._name("inputs", role)] = shape
            addresses[self._name("inputs", role)] = self._in[role].ptr
        for role, buf in self._out.items():
            if self._name("outputs", role) is not None:
                addresses[self._name("outputs", role)] = buf.ptr
        S, row = self.limits.node_budget, cache.heads * cache.dim
        for b in range(cache.layers):
            for i, side_role in enumerate(("key", "value")):
                name = contract_names(self._contract, "inputs", f"past_{side_role}")[b]
                shapes[name] = (1, past, cache.heads, cache.dim)
                addresses[name] = (cache.k, cache.v)[i].at(cache.offset(b, 0))
                out = contract_names(self._contract, "outputs", f"present_{side_role}")[b]
                addresses[out] = self._tree[i].at(b * S * row) if write_slot is None else \
                    (cache.k, cache.v)[i].at(cache.offset(b, write_slot))
        self.step.run(sizes, shapes, addresses)
        K, rows = self.top_k_max, n if self.head_rows is None else min(n, self.head_rows)
        return {"logprobs": self._out["topk_logprobs"].read((rows, K), stream=stream),
                "ids": self._out["topk_ids"].read((rows, K), stream=stream), "memory": ("device", rows)}

    def _scatter_tree(self, slots: np.ndarray) -> None:
        """Tree rows 0 .. n-1 -> scratch `slots`, one device 2D copy per node for K and V."""
        for row, slot in enumerate(np.asarray(slots).tolist()):
            self.cache.move_slot(self._tree, row, self.limits.node_budget, int(slot))

    def _write_draft_memory(self, out: dict, rows: np.ndarray, entries: np.ndarray) -> None:
        """The step's memory output rows -> memory entries (device copies, or host for "concat")."""
        if self._mem_k is not None:
            nbytes = self.cache.heads * self.cache.dim * 4
            for row, entry in zip(np.asarray(rows).tolist(), np.asarray(entries).tolist(), strict=True):
                for src, dst in ((self._out["memory_out_key"], self._mem_k), (self._out["memory_out_value"], self._mem_v)):
                    self.api.memcpy(dst.ptr + entry * nbytes, src.ptr + row * nbytes, nbytes, D2D, self.stream)
        elif self._mem_vec is not None:
            n = out["memory"][1]
            vectors = self._out["memory_out"].read((n, self._width), stream=self.stream)
            self._mem_vec[entries] = vectors[rows]

    def _write_target_features(self, features: np.ndarray, start: int) -> None:
        """Target features [m, F] -> memory entries S + 2 + start .. (written by the graph in place)."""
        if self.memory_graph is None:
            return
        feats = np.asarray(features, dtype=np.float32)
        m, first = feats.shape[0], self._mem_features + start
        name_in = contract_name(self._memory_contract, "inputs", "features")
        self._in["features"].write(feats, stream=self.stream)
        addresses = {name_in: self._in["features"].ptr}
        row = self.cache.heads * self.cache.dim
        if self._mem_k is not None:
            addresses[contract_name(self._memory_contract, "outputs", "memory_out_key")] = self._mem_k.at(first * row)
            addresses[contract_name(self._memory_contract, "outputs", "memory_out_value")] = self._mem_v.at(first * row)
        else:
            addresses[contract_name(self._memory_contract, "outputs", "memory_out")] = self._out["memory_out"].ptr
        self.memory_graph.run({"memory": m}, {name_in: (1, m, self.feature_dim)}, addresses)
        if self._mem_vec is not None:
            self._mem_vec[first:first + m] = self._out["memory_out"].read((m, self._width), stream=self.stream)
