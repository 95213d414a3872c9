"""A stand-in for TensorRT execution contexts on CPU: each runs the exported ONNX graph with
onnxruntime, reading inputs from and writing outputs to the raw addresses bound to it (host
memory from `runtime.cuda_memory.HostApi`). It lets the CPU tests drive the TensorRT runners'
bindings, profile choice, KV compaction and scatter end to end."""

from __future__ import annotations

import ctypes

import numpy as np

_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


class OrtBackedContext:
    """set_input_shape / set_tensor_address / execute_async_v3 over an onnxruntime session."""

    def __init__(self, session):
        self.session = session
        self.inputs = {i.name: _DTYPES[i.type] for i in session.get_inputs()}
        self.outputs = [o.name for o in session.get_outputs()]
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.runs = 0

    def set_input_shape(self, name, shape) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream) -> bool:
        feeds = {}
        for name, dtype in self.inputs.items():
            shape = self.shapes[name]
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            raw = (ctypes.c_char * nbytes).from_address(self.addresses[name])
            feeds[name] = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape).copy()
        for name, value in zip(self.outputs, self.session.run(None, feeds), strict=True):
            value = np.ascontiguousarray(value)
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
        self.runs += 1
        return True


def fake_graphs(manifest, names, api, stream=0, make_context=None) -> dict:
    """{graph: TrtGraph} over onnxruntime-backed contexts, one per manifest-derived profile.

    make_context(session, onnx_path) builds a context; default OrtBackedContext(session)."""
    import onnxruntime as ort

    from export.trt_profiles import graph_profiles
    from runtime.trt_runner import TrtGraph

    graphs = {}
    for name in names:
        if not manifest.has(name):
            continue
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(manifest.path(name)), options, providers=["CPUExecutionProvider"])
        profiles = [p.to_dict() for p in graph_profiles(manifest.data, name)]
        path = manifest.path(name)
        contexts = [make_context(session, path) if make_context else OrtBackedContext(session) for _ in profiles]
        graphs[name] = TrtGraph(name, contexts, profiles, api, stream)
    return graphs
