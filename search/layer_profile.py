"""Per-layer TensorRT timings of the profiled stages: the optional `stages.layers` of a latency table entry.

Place in the data flow: `dream-s-edge profile --backend trt` (`search/profile.py`) times every
stage first; then, with nothing timed any more, `stage_layers` attaches TensorRT's engine profiler
(`IProfiler`, through `runtime.trt_runner.TrtGraph.attach_profiler`) to the graphs a stage runs,
repeats the stage's call a few times and keeps each layer's mean milliseconds. The rows land in
`stages.layers` of the table (format in `search/latency_table.py`)::

    "layers": {"verify": {"shape": {"nodes": 16, "past": 256}, "runs": 5, "total_ms": 3.1,
                          "graphs": {"decoder": {"/model/layers.0/attn/qkv/MatMul": 0.04, ...}}}, ...}

A graph here is anything with `attach_profiler() -> {layer: [ms, ...]}` and `detach_profiler()`.
Search does not read these rows: they say where a stage's time goes on the device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)

LAYER_RUNS = 5  # profiled repeats per stage (after one unprofiled warm-up call)


def layer_means(times: dict[str, list[float]]) -> dict[str, float]:
    """{layer: [ms of each report]} -> {layer: mean ms}, in the order the layers were first reported.

    A layer TensorRT reported fewer times than the others (a shape-dependent branch) is averaged
    over its own reports.
    """
    return {name: float(np.mean(samples)) for name, samples in times.items() if samples}


def stage_layers(graphs: dict[str, object], call: Callable[[], object], shape: dict,
                 runs: int = LAYER_RUNS, before: Callable[[], object] | None = None) -> dict:
    """Per-layer mean ms of `runs` profiled calls of one stage.

    Args:
        graphs: {graph name: graph} the stage runs (e.g. {"decoder": target.decoder}); None values
            (a graph the export lacks) are skipped.
        call: one call of the stage through its runner.
        shape: the stage's shape, stored with the row (e.g. {"nodes": 16, "past": 256}).
        runs: profiled calls; each call's reports are one sample per layer.
        before: untimed set-up before every call (e.g. put the KV cache at the past length).

    Returns:
        {"shape", "runs", "graphs": {graph: {layer: mean ms}}, "total_ms"}; total_ms is the sum
        of every layer's mean (the engines' own time, without host work or copies).
    """
    graphs = {name: graph for name, graph in graphs.items() if graph is not None}
    if before is not None:
        before()
    call()  # warm-up without the profiler: the first call after a shape change sets the context up
    collected = {}
    try:
        for name, graph in graphs.items():
            collected[name] = graph.attach_profiler()
        for _ in range(runs):
            if before is not None:
                before()
            call()
    finally:
        for name in collected:
            graphs[name].detach_profiler()
    means = {name: layer_means(times) for name, times in collected.items()}
    total = float(sum(sum(layers.values()) for layers in means.values()))
    logger.debug("layers of %s: %d graphs, %.3f ms", shape, len(means), total)
    return {"shape": dict(shape), "runs": int(runs), "graphs": means, "total_ms": total}


def slowest_layers(row: dict, count: int = 3) -> list[tuple[str, str, float]]:
    """The `count` slowest (graph, layer, mean ms) of one `stage_layers` row, slowest first."""
    found = [(graph, layer, ms) for graph, layers in row["graphs"].items() for layer, ms in layers.items()]
    return sorted(found, key=lambda item: -item[2])[:count]
