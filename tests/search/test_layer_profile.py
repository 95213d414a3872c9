"""Per-layer TensorRT profiles on CPU: the aggregation, `TrtGraph.attach_profiler` under a fake
`tensorrt` module, `profile --backend trt` end to end over onnxruntime-backed fake engines (the
same stand-in as tests/runtime/trt_fakes.py, plus IProfiler reports), and the table round trip of
`stages.layers` (format version 2, version 1 tables still load and merge). No GPU needed."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from runtime import trt_runner
from runtime.cuda_memory import HostApi
from runtime.manifest import Manifest
from runtime.trt_runner import TrtDraftRunner, TrtGraph, TrtTargetRunner
from search.latency_table import LatencyTableError, load_table, new_table, save_table, select_entry, validate
from search.layer_profile import layer_means, slowest_layers, stage_layers
from search.profile import Backend, ProfileGrid, profile_entry


def _trt_fakes():
    """tests/runtime/trt_fakes.py (its folder is on sys.path only when runtime tests are collected)."""
    if "trt_fakes" in sys.modules:
        return sys.modules["trt_fakes"]
    path = Path(__file__).resolve().parents[1] / "runtime" / "trt_fakes.py"
    spec = importlib.util.spec_from_file_location("trt_fakes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["trt_fakes"] = module
    return module


class FakeIProfiler:
    """`tensorrt.IProfiler` stand-in: a plain base class (TensorRT's is a pybind11 trampoline)."""

    def __init__(self):
        self.initialised = True


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """`runtime.trt_runner.trt()` returns a module with only what the profiler needs."""
    module = types.SimpleNamespace(IProfiler=FakeIProfiler, __version__="10.0.fake")
    monkeypatch.setattr(trt_runner, "trt", lambda: module)
    return module


def layer_ms(index: int) -> float:
    return 0.001 * (index + 1)


def profiling_context_class():
    class ProfilingContext(_trt_fakes().OrtBackedContext):
        """Runs the ONNX graph like OrtBackedContext, then reports each node to an attached profiler."""

        def __init__(self, session, layers):
            super().__init__(session)
            self.layers, self.profiler, self.enqueue_emits_profile = layers, None, False

        def execute_async_v3(self, stream) -> bool:
            ok = super().execute_async_v3(stream)
            if self.profiler is not None:
                for i, name in enumerate(self.layers):
                    self.profiler.report_layer_time(name, layer_ms(i))
            return ok

    return ProfilingContext


def profiled_graphs(manifest, names, api) -> dict:
    """{graph: TrtGraph} over onnxruntime sessions whose contexts report every ONNX node as a layer."""
    import onnx

    context_class = profiling_context_class()

    def make_context(session, path):
        nodes = onnx.load(str(path), load_external_data=False).graph.node
        return context_class(session, [node.name or f"{node.op_type}_{i}" for i, node in enumerate(nodes)])

    return _trt_fakes().fake_graphs(manifest, names, api, 0, make_context)


@dataclass
class FakeTrtBackend(Backend):
    """The trt backend of `search.profile`, with fake engines on the host."""

    def __post_init__(self):
        self.api = HostApi()

    def target(self, manifest):
        return TrtTargetRunner(manifest, api=self.api, graphs=profiled_graphs(manifest, ("decoder", "vision"), self.api))

    def draft(self, manifest, embeddings):
        graphs = profiled_graphs(manifest, ("draft_step", "draft_memory"), self.api)
        return TrtDraftRunner(manifest, embeddings, api=self.api, graphs=graphs)

    def key(self, manifest) -> dict:
        return {"device": "gpu: fake sm0.0", "backend": "trt", "backend_version": "10.0.fake", "precision": "fp16",
                "model": "tiny"}


class ListGraph:
    """A graph whose 'engine' reports two layers per call, the second slower every other call."""

    def __init__(self):
        self.times, self.detached, self.calls = None, 0, 0

    def attach_profiler(self):
        self.times = {}
        return self.times

    def detach_profiler(self):
        self.times = None
        self.detached += 1

    def run(self):
        self.calls += 1
        if self.times is not None:
            self.times.setdefault("/a/MatMul", []).append(1.0)
            self.times.setdefault("/b/Softmax", []).append(2.0 if self.calls % 2 else 4.0)


def test_layer_means_keep_report_order_and_average_each_layer() -> None:
    means = layer_means({"/b": [1.0, 3.0], "/a": [0.5], "/none": []})
    assert list(means) == ["/b", "/a"] and means == {"/b": 2.0, "/a": 0.5}


def test_stage_layers_profiles_after_an_unprofiled_warmup_and_detaches() -> None:
    graph, setups = ListGraph(), []
    row = stage_layers({"decoder": graph, "vision": None}, graph.run, {"nodes": 4, "past": 8}, runs=4,
                       before=lambda: setups.append(1))
    assert graph.calls == 5 and len(setups) == 5  # warm-up + 4 profiled calls, each after its set-up
    assert row["runs"] == 4 and row["shape"] == {"nodes": 4, "past": 8} and list(row["graphs"]) == ["decoder"]
    assert row["graphs"]["decoder"] == {"/a/MatMul": 1.0, "/b/Softmax": 3.0}
    assert row["total_ms"] == pytest.approx(4.0) and graph.detached == 1
    assert slowest_layers(row, 1) == [("decoder", "/b/Softmax", 3.0)]

    def failing():
        graph.run()
        if graph.times is not None:
            raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError):
        stage_layers({"decoder": graph}, failing, {}, runs=2)
    assert graph.detached == 2 and graph.times is None  # detached even when a profiled call fails


def test_trt_graph_profiler_attach_and_detach(fake_tensorrt) -> None:
    class Context:
        profiler, enqueue_emits_profile = None, False

    contexts = [Context(), Context()]
    graph = TrtGraph("decoder", contexts, [{"name": "prefill", "axes": {}}, {"name": "verify", "axes": {}}], HostApi(), 0)
    times = graph.attach_profiler()
    assert all(c.profiler is contexts[0].profiler and c.enqueue_emits_profile for c in contexts)
    assert isinstance(contexts[0].profiler, FakeIProfiler) and contexts[0].profiler.initialised
    contexts[1].profiler.report_layer_time("/model/layers.0/MatMul", np.float32(0.25))
    assert times == {"/model/layers.0/MatMul": [0.25]}
    graph.detach_profiler()
    assert all(c.profiler is None for c in contexts)


def test_profile_entry_trt_writes_layers_and_round_trips(exported_tiny, fake_tensorrt, tmp_path) -> None:
    """`profile --backend trt` on fake engines: timed stages, then per-layer rows; the table round trip."""
    manifest = Manifest.load(exported_tiny[0])
    grid = ProfileGrid(prefill=(8, 16), nodes=(1, 4), past=(8, 32), draft_past=(8,), advance=(1,), repeats=1,
                       draft_repeats=1, layer_runs=2, layer_past=16)
    entry = profile_entry(manifest, FakeTrtBackend("trt", threads=1), [("base", manifest)], grid)
    layers = entry["stages"]["layers"]
    expected = {"prefill", "verify", "draft_advance", "draft_tree_step"} | ({"vision"} if manifest.has("vision") else set())
    assert set(layers) == expected and entry["meta"]["layer_runs"] == 2
    assert layers["verify"]["shape"] == {"nodes": manifest["limits"]["node_budget"], "past": 16}
    assert layers["prefill"]["shape"] == {"tokens": 16} and list(layers["draft_tree_step"]["graphs"]) == ["draft_step"]
    for row in layers.values():
        assert row["runs"] == 2
        for times in row["graphs"].values():
            assert list(times.values()) == pytest.approx([layer_ms(i) for i in range(len(times))])
        assert row["total_ms"] == pytest.approx(sum(sum(t.values()) for t in row["graphs"].values()))
    assert len(entry["stages"]["verify"]) == 4 and entry["stages"]["draft"]  # the timed stages are all there

    path = save_table(new_table([entry]), tmp_path / "trt.json")
    table = load_table(path)
    assert table["format_version"] == 2 and table["entries"][0] == json.loads(json.dumps(entry))


def _v1_entry() -> dict:
    key = {"device": "cpu: x", "backend": "ort-cpu", "backend_version": "1.20", "precision": "fp32", "model": "m V9"}
    return {"key": key, "meta": {}, "stages": {"verify": [{"nodes": 1, "past": 8, "ms": 3.0}], "blocks": {}}}


def _trt_entry() -> dict:
    key = {**_v1_entry()["key"], "device": "gpu: Orin sm8.7", "backend": "trt", "precision": "fp16"}
    layers = {"verify": {"shape": {"nodes": 16, "past": 256}, "runs": 5, "total_ms": 0.3,
                         "graphs": {"decoder": {"/model/layers.0/attn/MatMul": 0.1, "/lm_head/MatMul": 0.2}}}}
    return {"key": key, "meta": {}, "stages": {"verify": [{"nodes": 1, "past": 8, "ms": 1.0}], "layers": layers}}


def test_version_1_tables_load_and_merge_with_layer_rows(tmp_path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"format": "dream-s-edge-latency-table", "format_version": 1, "entries": [_v1_entry()]}))
    assert load_table(path)["entries"] == [_v1_entry()]
    save_table(new_table([_trt_entry()]), path)  # merged into the version 1 file
    table = load_table(path)
    assert table["format_version"] == 2 and len(table["entries"]) == 2
    assert select_entry(table, backend="trt")["stages"]["layers"] == _trt_entry()["stages"]["layers"]
    assert "layers" not in select_entry(table, backend="ort-cpu")["stages"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda layers: layers["verify"]["graphs"]["decoder"].update({"/x": -1.0}), r"stages\.layers\.verify\.graphs\.decoder"),
    (lambda layers: layers["verify"].update(runs=0), r"stages\.layers\.verify\.runs"),
    (lambda layers: layers["verify"].pop("graphs"), r"stages\.layers\.verify\.graphs"),
    (lambda layers: layers.update(verify=[1.0]), r"stages\.layers\.verify\.graphs"),
])
def test_layer_rows_are_validated(change, message) -> None:
    entry = _trt_entry()
    change(entry["stages"]["layers"])
    with pytest.raises(LatencyTableError, match=message):
        validate(new_table([entry]))
