"""onnxruntime plumbing shared by the ORT runners: sessions, provider checks, slot-major KV buffers.

Place in the data flow: `Manifest` -> `OrtGraph` (one session per exported graph, I/O checked
against the manifest's contract) -> `runtime/ort_target.py`, `runtime/ort_draft.py`.
`onnxruntime` is imported lazily, so `import runtime` works where it is not installed.

Providers: "cpu" (default), "cuda", "tensorrt". A session that silently falls back to another
provider than the one asked for is refused (`EngineError`), since its timings would be a lie.

`SlotKV` is a KV cache as the graphs take it (`export/contract.py`): per layer `[S, Hkv, D]`
slot-major, all layers in one buffer `[L, S, Hkv, D]` per K and V, allocated once as an OrtValue.
A graph gets the committed prefix of a layer by pointer (`[1, P, Hkv, D]`, contiguous, no copy) and
writes the new tokens' K/V by pointer straight into the slots after it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from runtime.errors import CapacityError, EngineError, SpecMismatchError
from runtime.manifest import check_session_io

logger = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_DEVICE = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}


def ort():
    """The onnxruntime module, imported on first use."""
    import onnxruntime

    return onnxruntime


def device_of(provider: str) -> str:
    """OrtValue device type of a provider name ("cpu" or "cuda")."""
    return _DEVICE[provider]


class OrtGraph:
    """One exported graph behind an onnxruntime session.

    Args:
        path: the .onnx file.
        graph: its contract name ("decoder", "vision", ...), for messages.
        contract: the manifest's io_contract entry; the session's I/O must match it.
        provider: "cpu", "cuda" or "tensorrt".
        threads: intra-op threads (None: onnxruntime's default, or $DREAM_S_EDGE_ORT_THREADS).
        spin: let idle pool threads spin-wait for work (None: $DREAM_S_EDGE_ORT_SPIN == "1", else
            off). Spinning saves a wake-up per op on cores nobody else uses, but the speculative
            loop runs several sessions in turn (and Python between them): a pool that spins after
            its run takes the cores from the next session. On a 2-core machine shared with other
            work it made every step about 3x slower (`runtime/step_timing.py`).

    Raises:
        EngineError: an unknown provider, or a session that fell back to another provider.
        ManifestError: the graph's I/O differs from the contract.
    """

    def __init__(self, path: Path, graph: str, contract: dict, provider: str = "cpu", threads: int | None = None,
                 spin: bool | None = None):
        if provider not in PROVIDERS:
            raise EngineError(f"Unknown onnxruntime provider {provider!r}.", hint=f"use one of {sorted(PROVIDERS)}")
        rt = ort()
        options = rt.SessionOptions()
        options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or int(os.environ.get("DREAM_S_EDGE_ORT_THREADS", "0"))
        if threads:
            options.intra_op_num_threads = threads
        spin = os.environ.get("DREAM_S_EDGE_ORT_SPIN", "0") == "1" if spin is None else spin
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3
        self.graph = graph
        self.provider = provider
        self.device = device_of(provider)
        self.session = rt.InferenceSession(str(path), options, providers=PROVIDERS[provider])
        chosen = self.session.get_providers()[0]
        if chosen != PROVIDERS[provider][0]:
            raise EngineError(
                f"onnxruntime fell back from {PROVIDERS[provider][0]} to {chosen} for the {graph} graph.",
                note=f"available providers: {rt.get_available_providers()}",
                hint="install onnxruntime-gpu with CUDA for provider 'cuda', or use provider 'cpu'",
            )
        check_session_io(graph, contract, self.session)
        self.contract = contract
        self._names: dict[tuple[str, str], list[str]] = {}
        self.binding = self.session.io_binding()

    def names(self, side: str, role: str) -> list[str]:
        """Names of the contract's tensors with `role` on `side` ("inputs"/"outputs"), in layer order."""
        key = (side, role)
        if key not in self._names:  # looked up on every call of a step: read the contract once
            found = [t for t in self.contract[side] if t["role"] == role]
            self._names[key] = [t["name"] for t in sorted(found, key=lambda t: t.get("layer") or 0)]
        return self._names[key]

    def name(self, side: str, role: str) -> str | None:
        """The one tensor with `role` on `side`, or None if the graph has none."""
        found = self.names(side, role)
        return found[0] if found else None

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Plain session.run (no binding), outputs in contract order."""
        return self.session.run(None, feeds)

    def bind_array(self, name: str, array: np.ndarray) -> None:
        """Binds a host array as an input (copied to the device when the provider is not the CPU)."""
        self.binding.bind_cpu_input(name, np.ascontiguousarray(array))

    def bind_buffer(self, name: str, buffer: DeviceBuffer, offset: int, shape: tuple, output: bool) -> None:
        """Binds `shape` elements of `buffer` starting at element `offset`, by pointer (no copy)."""
        args = (name, buffer.device, 0, buffer.dtype, list(shape), buffer.ptr(offset))
        if output:
            self.binding.bind_output(*args)
        else:
            self.binding.bind_input(*args)

    def bind_new_output(self, name: str) -> None:
        """Lets onnxruntime allocate an output on the host."""
        self.binding.bind_output(name, "cpu")

    def run_bound(self) -> None:
        """Runs with the current binding."""
        self.session.run_with_iobinding(self.binding)

    def clear(self) -> None:
        """Forgets every binding (shapes change between steps)."""
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()


class DeviceBuffer:
    """A buffer allocated once as an OrtValue; on the CPU also visible as a numpy array.

    Attributes:
        value: the OrtValue (same object for the buffer's whole life).
        array: the numpy view of the same memory (CPU), or None on a GPU.
    """

    def __init__(self, shape: tuple, dtype=np.float32, device: str = "cpu"):
        rt = ort()
        self.dtype = np.dtype(dtype).type
        self.device = device
        self.shape = tuple(shape)
        if device == "cpu":
            self.array = np.zeros(shape, dtype=dtype)
            self.value = rt.OrtValue.ortvalue_from_numpy(self.array)
        else:
            self.array = None
            self.value = rt.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, device, 0)
        self._base = self.value.data_ptr()
        self._itemsize = np.dtype(dtype).itemsize

    def ptr(self, offset: int) -> int:
        """Address of element `offset` (C order)."""
        return self._base + offset * self._itemsize


class SlotKV:
    """A slot-major KV cache: K and V buffers [L, S, Hkv, D], allocated once; `length` committed.

    Verbs as in `runtime/kv_cache.py`: `reset`, `commit(accepted, prev_len)`, `rewind_to(n)`, plus
    `offset(layer, slot)` (element offset of a slot, for binding by pointer) and `scatter` (writes
    rows of new K/V into arbitrary slots, for tree scratch areas).
    """

    def __init__(self, layers: int, slots: int, heads: int, dim: int, device: str = "cpu"):
        self.layers, self.slots, self.heads, self.dim = layers, slots, heads, dim
        self.k = DeviceBuffer((layers, slots, heads, dim), np.float32, device)
        self.v = DeviceBuffer((layers, slots, heads, dim), np.float32, device)
        self.length = 0

    def reset(self) -> None:
        """Forgets the committed slots; keeps the buffers."""
        self.length = 0

    def offset(self, layer: int, slot: int) -> int:
        """Element offset of (layer, slot) in the K or V buffer."""
        return (layer * self.slots + slot) * self.heads * self.dim

    def check_room(self, start: int, count: int) -> None:
        """Refuses a write past the last slot."""
        if start + count > self.slots:
            raise CapacityError(
                "The KV cache is too small for this step.",
                note=f"slots {start}..{start + count - 1}, capacity {self.slots}",
                hint="shorten the prompt or re-export with a larger max_context",
            )

    def commit(self, accepted: np.ndarray, prev_len: int) -> None:
        """Moves slots prev_len + accepted[i] to prev_len + i in every layer; length = prev_len + A."""
        idx = np.asarray(accepted, dtype=np.int64)
        if prev_len != self.length:
            raise SpecMismatchError("KV commit from a stale length.", note=f"prev_len {prev_len}, length {self.length}")
        self.check_room(prev_len, int(idx.max(initial=0)) + 1)
        if not np.array_equal(idx, np.arange(idx.size)):  # a chain is already in place
            self._require_host("commit a tree")
            dst = prev_len + np.arange(idx.size)
            src = prev_len + idx
            for buffer in (self.k.array, self.v.array):
                buffer[:, dst] = buffer[:, src]  # fancy indexing copies the sources first
        self.length = prev_len + idx.size

    def scatter(self, slots: np.ndarray, k_new: list[np.ndarray], v_new: list[np.ndarray]) -> None:
        """Writes per-layer K/V rows [n, Hkv, D] into `slots` [n] of every layer."""
        self._require_host("scatter tree K/V")
        for layer, (k, v) in enumerate(zip(k_new, v_new, strict=True)):
            self.k.array[layer, slots] = k
            self.v.array[layer, slots] = v

    def rewind_to(self, n: int) -> None:
        """Drops committed slots past n."""
        if not 0 <= n <= self.length:
            raise SpecMismatchError("Cannot rewind past the committed tokens.", note=f"n {n}, length {self.length}")
        self.length = n

    def _require_host(self, what: str) -> None:
        if self.k.array is None:
            raise EngineError(
                f"Cannot {what} in a device-resident KV cache yet.",
                hint="use provider 'cpu' for speculative decoding; the GPU path covers autoregressive decoding",
            )
