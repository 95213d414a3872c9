"""`OrtDraftRunner`: the exported DREAM draft on onnxruntime, same semantics as `TorchDraftRunner`.

Implements `runtime.runner.DraftRunner` over `draft_step.onnx` and `draft_memory.onnx`. Buffers,
allocated once (C = max_context, S = scratch slots), slot-major as the contract says:

  [1] self-attention K/V per block, `[S + C + 1, Hkv, D]`: scratch slots 0 .. S-1 for tree nodes,
      then the committed stream at S + j (root included). A step reads the prefix `S + committed`
      by pointer; a chain writes its new K/V by pointer at the next committed slots, a tree level
      writes into a small buffer that is scattered into its scratch slots.
  [2] feature memory, M = S + 2 + C entries: 0 the learned null, 1 + s the output feature of the
      node in scratch slot s, S + 1 the root's own output feature, S + 2 + j the target feature of
      position j. "cross_attention" keeps projected K/V `[M, Hkv, D]` (read by pointer),
      "concat" keeps vectors `[M, H_d]` (gathered into `previous`), "none" keeps none.

The one-step shift, masks and scratch rules are those of `dream_s_edge/runners/draft_torch.py`
(masks are additive here: 0 visible, float32 min hidden). Visual-token compression is not applied:
the ORT target gives no attention scores, so every prompt position is kept (as the torch path does
with sdpa attention).
"""

from __future__ import annotations

import logging

import numpy as np

from runtime.errors import CapacityError, SpecMismatchError
from runtime.manifest import Manifest
from runtime.ort_backend import DeviceBuffer, OrtGraph, SlotKV
from runtime.prompt_head import shared_prefix
from runtime.runner import PrefillResult, Proposal, RunnerLimits
from runtime.tree_calibration import TreeCalibration

logger = logging.getLogger(__name__)

MASK_MIN = float(np.finfo(np.float32).min)


def _additive(visible: np.ndarray) -> np.ndarray:
    """bool [n, W] -> float32 [1, 1, n, W] (0 visible, float32 min hidden)."""
    return np.where(visible, np.float32(0.0), np.float32(MASK_MIN)).astype(np.float32)[None, None]


class OrtDraftRunner:
    """The draft on onnxruntime (implements `runtime.runner.DraftRunner`).

    Args:
        manifest: the validated artifact manifest (with a `draft` section).
        embeddings: [V, H_t] the target's token embedding table (shared with the target runner).
        provider: "cpu" (the scatter of tree K/V and memory needs host buffers).
        threads: intra-op threads (None: onnxruntime's default).
    """

    padded_steps = False  # onnxruntime takes any width: a tree level runs on its real nodes only
    chain_step = None  # a draft_chain graph for chains (they read their last row only); None: `step`

    def __init__(self, manifest: Manifest, embeddings: np.ndarray, provider: str = "cpu", threads: int | None = None):
        self._configure(manifest, embeddings)
        self.step = OrtGraph(manifest.path("draft_step"), "draft_step", manifest.contract("draft_step"), provider, threads)
        if manifest.has("draft_chain"):  # the same step with outputs for the last token only (optional in a manifest)
            self.chain_step = OrtGraph(manifest.path("draft_chain"), "draft_chain", manifest.contract("draft_chain"),
                                       provider, threads)
        self.memory_graph = None
        if manifest.has("draft_memory"):
            self.memory_graph = OrtGraph(manifest.path("draft_memory"), "draft_memory",
                                         manifest.contract("draft_memory"), provider, threads)
        self._allocate(manifest)

    def _configure(self, manifest: Manifest, embeddings: np.ndarray) -> None:
        """Sizes, layout and host-side state from the manifest (shared with the TensorRT draft runner)."""
        section = manifest["draft"]
        spec = section["spec"]
        self.interaction = spec["interaction"]
        self.feature_dim = len(spec["feature_layers"]) * int(spec["target_hidden_size"])
        self.top_k_max = int(section["top_k"])
        scratch = int(section["scratch_slots"])
        # outputs cover the last min(n, head_rows) tokens of a step (all n in exports before head_rows):
        # a chain reads its last row, a tree level (n <= scratch = head_rows) every row
        self.head_rows = int(section.get("head_rows") or 0) or None
        context = int(manifest["limits"]["max_context"])
        self.limits = RunnerLimits(max_context=context, node_budget=scratch, max_depth=int(section["max_depth"]))
        self.embeddings = embeddings
        self.d2t = np.load(manifest.path("draft_d2t")) if manifest.has("draft_d2t") else None
        calibration = section.get("calibration")  # written by `dream-s-edge calibrate`; None: raw draft scores
        self.calibration = None if calibration is None else TreeCalibration.from_dict(calibration)
        self._heads = int(spec["num_kv_heads"])
        # head width: explicit for DREAM-S sub-networks that keep fewer heads (see DraftSpec.attention_head_dim)
        self._dim = int(spec.get("attention_head_dim") or int(spec["hidden_size"]) // int(spec["num_heads"]))
        self._blocks, self._width = int(spec["num_layers"]), int(spec["hidden_size"])
        # Layout: self slots [scratch | committed], memory entries [null | scratch | root | features].
        self._committed0, self._mem_root, self._mem_features = scratch, scratch + 1, scratch + 2
        self._mem_width = scratch + 2 + context
        self._scratch_pos = np.full(scratch, -1, dtype=np.int64)
        self._n_self = 0
        self._root_pos = -1
        self._prompt_ids: np.ndarray | None = None  # the last prefilled prompt's ids (its K/V lead the cache)

    def _allocate(self, manifest: Manifest) -> None:
        """The host / OrtValue buffers (see the module docstring)."""
        heads, dim, blocks, scratch = self._heads, self._dim, self._blocks, self.limits.node_budget
        self.cache = SlotKV(blocks, scratch + self.limits.max_context + 1, heads, dim, "cpu")  # [1]
        self._mem_k = self._mem_v = self._mem_vec = None  # [2]
        if self.interaction == "cross_attention":
            self._mem_k = DeviceBuffer((self._mem_width, heads, dim))
            self._mem_v = DeviceBuffer((self._mem_width, heads, dim))
            self._mem_k.array[0] = np.load(manifest.path("draft_null_key"))
            self._mem_v.array[0] = np.load(manifest.path("draft_null_value"))
        elif self.interaction == "concat":
            self._mem_vec = np.zeros((self._mem_width, self._width), dtype=np.float32)
            self._mem_vec[0] = np.load(manifest.path("draft_null_feature"))
        self._tree_k = DeviceBuffer((blocks, scratch, heads, dim))  # a tree level's new K/V before the scatter
        self._tree_v = DeviceBuffer((blocks, scratch, heads, dim))
        self._names = {role: self.step.names(side, role) for side, role in (
            ("inputs", "past_key"), ("inputs", "past_value"), ("outputs", "present_key"), ("outputs", "present_value"))}

    # ---- state ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forgets the committed tokens; keeps every buffer (the null entry stays at entry 0)."""
        self._n_self = 0
        self._root_pos = -1
        self._scratch_pos[:] = -1

    @property
    def length(self) -> int:
        """Committed positions (prompt, accepted tokens, root); 0 before prefill."""
        return self._root_pos + 1

    # ---- the DraftRunner interface --------------------------------------------------------
    def prefill(self, result: PrefillResult, input_ids: np.ndarray, root: int, top_k: int) -> Proposal:
        """Consumes the target's prefill and the first root; commits T + 1 positions; returns [1, K].

        The first `result.reused` positions are not run again where they equal the previous prompt's.
        """
        ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
        count = ids.size
        self._check_features(result.features, count, "prefill")
        if not 1 <= count <= self.limits.max_context:
            raise CapacityError("The prompt does not fit the draft's buffers.",
                                note=f"T={count}, max_context={self.limits.max_context}")
        kept = 0 if self._prompt_ids is None else min(int(result.reused), shared_prefix(ids, self._prompt_ids))
        self.reset()
        self._prompt_ids = None  # the passes below write from slot `kept` on
        prompt = self._lookup(ids) if result.inputs_embeds is None else np.asarray(result.inputs_embeds, np.float32)
        embeds = np.concatenate((prompt, self._lookup(np.array([root]))), axis=0)  # [T + 1, H_t]
        self._write_target_features(result.features[kept:], start=kept)
        self._n_self = kept  # the head's K/V and features are still in their slots and entries
        out = self._chain(embeds[kept:], np.arange(kept, count + 1, dtype=np.int64), last=count, top_k=top_k)
        self._prompt_ids = ids.copy()
        return self._set_root(count, out, top_k)

    def advance(self, tokens: np.ndarray, features: np.ndarray, top_k: int) -> Proposal:
        """Consumes A tokens and the target features [A, F]; commits A positions; returns [1, K]."""
        self._require_prefill("advance")
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        old_root = self._root_pos
        new_root = old_root + ids.size
        self._check_features(features, ids.size, "advance")
        if ids.size < 1 or new_root > self.limits.max_context:
            raise CapacityError("Advancing the draft goes beyond its buffers.",
                                note=f"root position {old_root} + A={ids.size} > max_context={self.limits.max_context}")
        self._write_target_features(features, start=old_root)
        out = self._chain(self._lookup(ids), np.arange(old_root + 1, new_root + 1), last=new_root, top_k=top_k)
        return self._set_root(new_root, out, top_k)

    def tree_step(self, tokens, positions, slots, tree_mask, top_k: int) -> Proposal:
        """Consumes n tree nodes below the root (one depth level), produces their top-k [n, K]."""
        self._require_prefill("tree_step")
        pos, slot, tree = self._check_tree(positions, slots, tree_mask)
        n, scratch = slot.size, self.limits.node_budget
        ancestors = tree.copy()
        ancestors[np.arange(n), slot] = False
        width = self._committed0 + self._n_self
        visible = np.zeros((n, width + n), dtype=bool)
        visible[:, :scratch] = ancestors
        visible[:, scratch:width] = True
        visible[np.arange(n), width + np.arange(n)] = True
        mem_visible = np.ones((n, self._mem_features + self._root_pos), dtype=bool)
        mem_visible[:, 1:scratch + 1] = ancestors
        previous = None
        if self._mem_vec is not None:
            previous = self._mem_vec[self._parent_entries(ancestors)][None]
        embeds = self._lookup(np.asarray(tokens, dtype=np.int64).reshape(-1))
        out = self._run(embeds, previous, pos, visible, mem_visible, width, None, top_k)
        self._scatter_tree(slot)
        self._write_draft_memory(out, np.arange(n), 1 + slot)
        self._scratch_pos[slot] = pos
        return self._proposal(out, top_k)

    # ---- internals ------------------------------------------------------------------------
    def _scatter_tree(self, slots: np.ndarray) -> None:
        """A tree level's new K/V (rows 0 .. n-1 of the tree buffers) -> scratch `slots` [n]."""
        n = slots.size
        self.cache.scatter(slots, [self._tree_k.array[b, :n] for b in range(self.cache.layers)],
                           [self._tree_v.array[b, :n] for b in range(self.cache.layers)])

    def _chain(self, embeds: np.ndarray, positions: np.ndarray, last: int, top_k: int) -> dict:
        """Commits a chain of n tokens at increasing positions ending at `last`."""
        n, start = positions.size, self._n_self
        width = self._committed0 + start
        visible = np.zeros((n, width + n), dtype=bool)
        visible[:, self._committed0:width] = True
        visible[:, width:] = np.tril(np.ones((n, n), dtype=bool))
        cols = np.arange(self._mem_features + last)
        mem_visible = (cols[None] >= self._mem_features) & (cols[None] < self._mem_features + positions[:, None])
        mem_visible[:, 0] = True
        previous = None
        if self._mem_vec is not None:
            previous = self._mem_vec[np.where(positions > 0, positions + self._mem_features - 1, 0)][None]
        out = self._run(embeds, previous, positions, visible, mem_visible, width, width, top_k, self.chain_step)
        self._n_self += n
        return out

    def _run(self, embeds, previous, positions, visible, mem_visible, past, write_slot, top_k, graph=None) -> dict:
        """One draft_step call (or `graph`, the chain variant). New K/V go to committed slots from
        `write_slot`, or (None) to the tree buffers. Returns {"logprobs", "ids", "memory": tuple of arrays}."""
        graph, cache = graph or self.step, self.cache
        n = positions.size
        graph.clear()
        graph.bind_array(graph.name("inputs", "inputs_embeds"), embeds[None].astype(np.float32))
        if previous is not None:
            graph.bind_array(graph.name("inputs", "previous"), previous.astype(np.float32))
        graph.bind_array(graph.name("inputs", "position_ids"), positions.astype(np.int64))
        graph.bind_array(graph.name("inputs", "self_mask"), _additive(visible))
        if self._mem_k is not None:
            width = mem_visible.shape[1]
            shape = (1, width, cache.heads, cache.dim)
            graph.bind_buffer(graph.name("inputs", "memory_key"), self._mem_k, 0, shape, False)
            graph.bind_buffer(graph.name("inputs", "memory_value"), self._mem_v, 0, shape, False)
            graph.bind_array(graph.name("inputs", "memory_mask"), _additive(mem_visible))
        for role in ("topk_logprobs", "topk_ids", "memory_out_key", "memory_out_value", "memory_out"):
            if graph.name("outputs", role) is not None:
                graph.bind_new_output(graph.name("outputs", role))
        past_shape, new_shape = (1, past, cache.heads, cache.dim), (1, n, cache.heads, cache.dim)
        for b in range(cache.layers):
            graph.bind_buffer(self._names["past_key"][b], cache.k, cache.offset(b, 0), past_shape, False)
            graph.bind_buffer(self._names["past_value"][b], cache.v, cache.offset(b, 0), past_shape, False)
            if write_slot is None:
                k_buf, v_buf, offset = self._tree_k, self._tree_v, b * self.limits.node_budget * cache.heads * cache.dim
            else:
                k_buf, v_buf, offset = cache.k, cache.v, cache.offset(b, write_slot)
            graph.bind_buffer(self._names["present_key"][b], k_buf, offset, new_shape, True)
            graph.bind_buffer(self._names["present_value"][b], v_buf, offset, new_shape, True)
        graph.run_bound()
        values = graph.binding.get_outputs()
        outputs = [values[i].numpy() for i in range(len(values) - 2 * cache.layers)]
        return {"logprobs": outputs[0], "ids": outputs[1], "memory": tuple(outputs[2:])}

    def _set_root(self, position: int, out: dict, top_k: int) -> Proposal:
        """Records the new root, stores its own output feature, clears the scratch area."""
        self._root_pos = position
        self._scratch_pos[:] = -1
        last = out["logprobs"].shape[0] - 1
        self._write_draft_memory(out, np.array([last]), np.array([self._mem_root]))
        return self._proposal({"logprobs": out["logprobs"][-1:], "ids": out["ids"][-1:]}, top_k)

    def _write_draft_memory(self, out: dict, rows: np.ndarray, entries: np.ndarray) -> None:
        """The step's own memory outputs (rows) -> memory entries (feature autoregression)."""
        memory = out["memory"]
        if self._mem_k is not None:
            self._mem_k.array[entries] = memory[0][0, rows]
            self._mem_v.array[entries] = memory[1][0, rows]
        elif self._mem_vec is not None:
            self._mem_vec[entries] = memory[0][0, rows]

    def _write_target_features(self, features: np.ndarray, start: int) -> None:
        """Target features [m, F] of positions start .. start + m - 1 -> memory entries."""
        if self.memory_graph is None:
            return
        feats = np.asarray(features, dtype=np.float32)[None]
        first = self._mem_features + start
        entries = np.arange(first, first + feats.shape[1])
        memory = self.memory_graph.run({self.memory_graph.name("inputs", "features"): feats})
        if self._mem_k is not None:
            self._mem_k.array[entries] = memory[0][0]
            self._mem_v.array[entries] = memory[1][0]
        else:
            self._mem_vec[entries] = memory[0][0]

    def _parent_entries(self, ancestors: np.ndarray) -> np.ndarray:
        """Memory entry of each node's parent output ("concat"): the deepest ancestor, else the root."""
        entries = np.full(ancestors.shape[0], self._mem_root, dtype=np.int64)
        for i, row in enumerate(ancestors):
            anc = np.flatnonzero(row)
            if anc.size:
                entries[i] = 1 + anc[np.argmax(self._scratch_pos[anc])]
        return entries

    def _proposal(self, out: dict, top_k: int) -> Proposal:
        """Top-k rows as target ids and log-probs, [n, K]."""
        k = top_k
        if not 1 <= k <= self.top_k_max:
            raise CapacityError("top_k exceeds what the draft graph was exported for.",
                                note=f"top_k={k}, exported top_k={self.top_k_max}",
                                hint="re-export with a tree of larger top_k")
        ids = out["ids"][:, :k].astype(np.int64)
        if self.d2t is not None:
            ids = self.d2t[ids]
        return Proposal(token_ids=ids, logprobs=out["logprobs"][:, :k].astype(np.float32))

    def _lookup(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.embeddings[ids], dtype=np.float32)

    def _require_prefill(self, what: str) -> None:
        if self._root_pos < 0:
            raise SpecMismatchError(f"{what} called before prefill.", hint="call prefill first")

    def _check_features(self, features: np.ndarray, rows: int, what: str) -> None:
        if tuple(np.shape(features)) != (rows, self.feature_dim):
            raise SpecMismatchError(f"The target features given to {what} do not fit the draft.",
                                    note=f"features shape={tuple(np.shape(features))}, expected {(rows, self.feature_dim)}")

    def _check_tree(self, positions, slots, tree_mask):
        """Validates one tree level; returns positions [n], slots [n], mask [n, S] (own slot set)."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        slot = np.asarray(slots, dtype=np.int64).reshape(-1)
        mask = np.asarray(tree_mask, dtype=bool)
        scratch, n = self.limits.node_budget, slot.size
        if mask.ndim != 2 or mask.shape[0] != n or pos.size != n or mask.shape[1] > scratch:
            raise CapacityError("The tree step does not fit the draft's scratch area.",
                                note=f"slots {n}, positions {pos.size}, tree_mask {mask.shape}, scratch slots {scratch}")
        if n and (slot.min() < 0 or slot.max() >= scratch or np.unique(slot).size != n):
            raise CapacityError("Tree slots must be distinct and inside the scratch area.",
                                note=f"slots={slot.tolist()}, scratch slots={scratch}")
        depth = pos - self._root_pos
        if n and (depth.min() < 1 or depth.max() > self.limits.max_depth):
            raise CapacityError("A tree node lies deeper than the draft's buffers allow (or above the root).",
                                note=f"depths={depth.tolist()}, max_depth={self.limits.max_depth}")
        full = np.zeros((n, scratch), dtype=bool)
        full[:, : mask.shape[1]] = mask
        full[np.arange(n), slot] = True
        return pos, slot, full
