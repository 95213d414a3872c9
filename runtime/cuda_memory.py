"""Device memory without torch: one tiny layer over the CUDA runtime (libcudart through ctypes).

Place in the data flow: `runtime/trt_runner.py` allocates every buffer once through a `MemoryApi`
(`DeviceArray`), copies inputs in and outputs out with `memcpy`, and compacts KV slots on the
device with `memcpy2d` (one call moves a slot in every layer). Every call's status is checked.

Two implementations of the same API:

* `CudaApi`: libcudart, found by Polygraphy's loader (`polygraphy.cuda.wrapper()`), imported on
  first use, so `import runtime` works without CUDA. Adds what the TensorRT runner needs besides
  malloc/memcpy: 2D copies, memset, stream capture into CUDA graphs, device properties.
* `HostApi`: plain host memory with the same calls (ctypes.memmove). The CPU tests drive the
  TensorRT runner's bookkeeping (bindings, KV compaction, scatter) through it.

Pointers are ints; sizes are bytes; `stream` is a stream handle (int) or None (synchronous).
"""

from __future__ import annotations

import ctypes
import logging

import numpy as np

from runtime.errors import CapacityError, EngineError, SpecMismatchError
from runtime.trt_engines import compaction_moves

logger = logging.getLogger(__name__)

H2D, D2H, D2D = 1, 2, 3  # cudaMemcpyKind
_CAPTURE_GLOBAL = 0  # cudaStreamCaptureModeGlobal
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor


class HostApi:
    """Host memory behind the `CudaApi` calls (no device; streams are no-ops)."""

    kind = "host"

    def __init__(self):
        self._blocks: dict[int, ctypes.Array] = {}

    def malloc(self, nbytes: int) -> int:
        block = (ctypes.c_char * max(int(nbytes), 1))()
        ptr = ctypes.addressof(block)
        self._blocks[ptr] = block
        return ptr

    def free(self, ptr: int) -> None:
        self._blocks.pop(ptr, None)

    def memcpy(self, dst: int, src: int, nbytes: int, kind: int, stream=None) -> None:
        ctypes.memmove(dst, src, int(nbytes))

    def memcpy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: int,
                 stream=None) -> None:
        for row in range(int(height)):
            ctypes.memmove(dst + row * dpitch, src + row * spitch, int(width))

    def memset(self, ptr: int, value: int, nbytes: int, stream=None) -> None:
        ctypes.memset(ptr, value, int(nbytes))

    def stream_create(self) -> int:
        return 0

    def stream_synchronize(self, stream) -> None:
        return None

    def stream_destroy(self, stream) -> None:
        return None


class CudaApi:
    """libcudart through ctypes; every call's status is checked (EngineError with the code)."""

    kind = "cuda"

    def __init__(self):
        try:
            from polygraphy.cuda import wrapper
        except ImportError as error:
            raise EngineError("The CUDA runtime wrapper needs polygraphy.", hint="pip install polygraphy") from error
        self.lib = wrapper().handle

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise EngineError(f"CUDA call {what} failed.", note=f"cudaError {status}",
                              hint="see https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(int(nbytes), 1))), "cudaMalloc")
        return int(ptr.value)

    def free(self, ptr: int) -> None:
        self.check(self.lib.cudaFree(ctypes.c_void_p(ptr)), "cudaFree")

    def memcpy(self, dst: int, src: int, nbytes: int, kind: int, stream=None) -> None:
        args = (ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(int(nbytes)), ctypes.c_int(kind))
        if stream is None:
            self.check(self.lib.cudaMemcpy(*args), "cudaMemcpy")
        else:
            self.check(self.lib.cudaMemcpyAsync(*args, ctypes.c_void_p(stream)), "cudaMemcpyAsync")

    def memcpy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: int,
                 stream=None) -> None:
        size = ctypes.c_size_t
        self.check(self.lib.cudaMemcpy2DAsync(ctypes.c_void_p(dst), size(dpitch), ctypes.c_void_p(src), size(spitch),
                                              size(width), size(height), ctypes.c_int(kind), ctypes.c_void_p(stream)),
                   "cudaMemcpy2DAsync")

    def memset(self, ptr: int, value: int, nbytes: int, stream=None) -> None:
        self.check(self.lib.cudaMemsetAsync(ctypes.c_void_p(ptr), ctypes.c_int(value), ctypes.c_size_t(int(nbytes)),
                                            ctypes.c_void_p(stream)), "cudaMemsetAsync")

    def stream_create(self) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(ptr)), "cudaStreamCreate")
        return int(ptr.value)

    def stream_synchronize(self, stream) -> None:
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def stream_destroy(self, stream) -> None:
        self.check(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")

    # ---- CUDA graphs ------------------------------------------------------------------------
    def begin_capture(self, stream: int) -> None:
        self.check(self.lib.cudaStreamBeginCapture(ctypes.c_void_p(stream), ctypes.c_int(_CAPTURE_GLOBAL)),
                   "cudaStreamBeginCapture")

    def end_capture(self, stream: int) -> int:
        """Ends a capture; returns an instantiated graph (cudaGraphExec_t)."""
        graph, exec_ = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(self.lib.cudaStreamEndCapture(ctypes.c_void_p(stream), ctypes.byref(graph)), "cudaStreamEndCapture")
        self.check(self.lib.cudaGraphInstantiate(ctypes.byref(exec_), graph, ctypes.c_ulonglong(0)),
                   "cudaGraphInstantiate")
        self.check(self.lib.cudaGraphDestroy(graph), "cudaGraphDestroy")
        return int(exec_.value)

    def graph_launch(self, exec_: int, stream: int) -> None:
        self.check(self.lib.cudaGraphLaunch(ctypes.c_void_p(exec_), ctypes.c_void_p(stream)), "cudaGraphLaunch")

    def graph_destroy(self, exec_: int) -> None:
        self.check(self.lib.cudaGraphExecDestroy(ctypes.c_void_p(exec_)), "cudaGraphExecDestroy")

    # ---- device ---------------------------------------------------------------------------------
    def device_name_and_cc(self, device: int = 0) -> tuple[str, str]:
        """(GPU name, compute capability "major.minor") of a device."""
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, device), "cudaDeviceGetAttribute")
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, device), "cudaDeviceGetAttribute")
        props = ctypes.create_string_buffer(16384)  # cudaDeviceProp starts with char name[256]
        self.check(self.lib.cudaGetDeviceProperties(props, device), "cudaGetDeviceProperties")
        name = props.raw[:256].split(b"\0", 1)[0].decode(errors="replace")
        return name, f"{major.value}.{minor.value}"


class DeviceArray:
    """One buffer allocated once: `shape`, `dtype`, `ptr`; freed with `free()`.

    Outputs written into a DeviceArray are reused buffers: copy what you keep (`to_host`).
    """

    def __init__(self, api, shape: tuple, dtype=np.float32):
        self.api, self.shape, self.dtype = api, tuple(int(s) for s in shape), np.dtype(dtype)
        self.itemsize = self.dtype.itemsize
        self.nbytes = int(np.prod(self.shape)) * self.itemsize
        self.ptr = api.malloc(self.nbytes)

    def at(self, offset: int) -> int:
        """Address of element `offset` (C order)."""
        return self.ptr + int(offset) * self.itemsize

    def write(self, array: np.ndarray, offset: int = 0, stream=None) -> None:
        """Copies a host array in at element `offset`."""
        host = np.ascontiguousarray(array, dtype=self.dtype)
        if offset * self.itemsize + host.nbytes > self.nbytes:
            raise EngineError("A copy into a device buffer overruns it.",
                              note=f"{host.nbytes} bytes at element {offset}, buffer {self.nbytes} bytes {self.shape}")
        self.api.memcpy(self.at(offset), host.ctypes.data, host.nbytes, H2D, stream)
        if stream is not None:  # the host array may go away before the async copy runs
            self.api.stream_synchronize(stream)

    def read(self, shape: tuple, offset: int = 0, stream=None) -> np.ndarray:
        """A host copy of `shape` elements starting at element `offset`."""
        out = np.empty(shape, dtype=self.dtype)
        self.api.memcpy(out.ctypes.data, self.at(offset), out.nbytes, D2H, stream)
        if stream is not None:
            self.api.stream_synchronize(stream)
        return out

    def free(self) -> None:
        if self.ptr:
            self.api.free(self.ptr)
            self.ptr = 0


class DeviceKV:
    """A slot-major KV cache in device memory: K and V `[L, S, Hkv, D]`, `length` committed slots.

    Same verbs as `runtime.ort_backend.SlotKV` (`reset`, `offset`, `check_room`, `commit`,
    `rewind_to`), but `commit` compacts the accepted path on the device: one 2D copy per moved node
    and K/V moves that slot in all L layers (row pitch S * Hkv * D elements).
    """

    def __init__(self, api, layers: int, slots: int, heads: int, dim: int, stream=None):
        self.api, self.layers, self.slots, self.heads, self.dim = api, layers, slots, heads, dim
        self.k = DeviceArray(api, (layers, slots, heads, dim))
        self.v = DeviceArray(api, (layers, slots, heads, dim))
        self.stream = stream
        self.length = 0
        self.copies = 0  # 2D copies issued by commit/scatter (for tests and profiling)

    def reset(self) -> None:
        self.length = 0

    def offset(self, layer: int, slot: int) -> int:
        return (layer * self.slots + slot) * self.heads * self.dim

    def check_room(self, start: int, count: int) -> None:
        if start + count > self.slots:
            raise CapacityError("The KV cache is too small for this step.",
                                note=f"slots {start}..{start + count - 1}, capacity {self.slots}",
                                hint="shorten the prompt or re-export with a larger max_context")

    def move_slot(self, src_buffers: tuple[DeviceArray, DeviceArray], src_slot: int, src_slots: int,
                  dst_slot: int) -> None:
        """Copies slot `src_slot` of every layer of (K, V) buffers [L, src_slots, Hkv, D] into `dst_slot`."""
        row = self.heads * self.dim * 4
        for src, dst in zip(src_buffers, (self.k, self.v), strict=True):
            self.api.memcpy2d(dst.at(self.offset(0, dst_slot)), self.slots * row, src.at(src_slot * self.heads * self.dim),
                              src_slots * row, row, self.layers, D2D, self.stream)
            self.copies += 1

    def commit(self, accepted, prev_len: int) -> None:
        """Moves slots prev_len + accepted[i] to prev_len + i on the device; length = prev_len + A."""
        if prev_len != self.length:
            raise SpecMismatchError("KV commit from a stale length.", note=f"prev_len {prev_len}, length {self.length}")
        accepted = [int(a) for a in accepted]
        self.check_room(prev_len, max(accepted, default=0) + 1)
        for src, dst in compaction_moves(accepted, prev_len):
            self.move_slot((self.k, self.v), src, self.slots, dst)
        self.length = prev_len + len(accepted)

    def rewind_to(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise SpecMismatchError("Cannot rewind past the committed tokens.", note=f"n {n}, length {self.length}")
        self.length = n

    def free(self) -> None:
        self.k.free()
        self.v.free()
