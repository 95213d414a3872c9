"""Two devices side by side: the same synthetic τ̂ searched against a CPU-like table (verify cost
linear in the nodes) and a GPU-like one (flat verify) chooses differently; each choice is costed on
both tables, and compare.json round-trips."""

from __future__ import annotations

import json

import pytest
from test_latency_model import synthetic_entry
from test_search import SPECS, TREES, _tau

from search.compare import (
    CompareReport,
    TableSelection,
    compare_choices,
    format_compare,
    plot_compare,
    table_labels,
)
from search.latency import LatencyModel
from search.latency_table import new_table, save_table
from search.search import SearchError, search_drafts
from search.supernet import param_count


def _two_device_table(path):
    """One table file with a CPU-like ort-cpu entry and a flat-verify GPU-like trt entry."""
    cpu = synthetic_entry(verify_per_node=10.0, verify_base=10.0)
    gpu = synthetic_entry(verify_per_node=0.0)
    gpu["key"] = {**gpu["key"], "device": "gpu: test", "backend": "trt", "precision": "fp16"}
    return save_table(new_table([cpu, gpu]), path, merge=False)


def test_two_tables_choose_differently_and_round_trip(tmp_path) -> None:
    table = _two_device_table(tmp_path / "table.json")
    selections = [TableSelection(table, backend="ort-cpu"), TableSelection(table, backend="trt")]
    runs = []
    for selection in selections:
        entry = selection.entry()
        result, _ = search_drafts(LatencyModel(entry), SPECS, TREES, _tau, param_count, past=256)
        runs.append((selection, entry, result))
    report = compare_choices(runs, past=256, provenance={"tau": "synthetic"})
    cpu, gpu = report.tables
    assert (cpu.label, gpu.label) == ("ort-cpu @ cpu", "trt @ gpu: test")
    assert not report.same_choice
    assert (cpu.result.choice, cpu.result.tree) != (gpu.result.choice, gpu.result.tree)
    assert gpu.result.tree.node_budget > cpu.result.tree.node_budget  # a flat verify affords a bigger tree
    for own, other in ((cpu, gpu), (gpu, cpu)):
        # its own table's score is the search's own prediction, and no other choice beats it there
        assert own.scores[own.label].speedup == pytest.approx(own.result.predicted_speedup)
        assert own.scores[own.label].step_ms == pytest.approx(own.result.step_ms)
        assert other.scores[own.label].speedup <= own.scores[own.label].speedup
    # the GPU's bigger tree costs more on the CPU than the CPU's own pick
    assert gpu.scores[cpu.label].speedup < cpu.result.predicted_speedup

    path = report.save(tmp_path / "compare.json")
    again = CompareReport.load(path)
    assert again == report
    data = json.loads(path.read_text())
    assert data["format"] == "dream-s-edge-search-compare" and data["same_choice"] is False
    assert data["provenance"] == {"tau": "synthetic", "past": 256, "visual_tokens": 0}
    plot_compare(report, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 0
    lines = format_compare(report)
    assert cpu.label in lines[0] and gpu.label in lines[0] and lines[-1].endswith("differently")
    assert sum(line.startswith("speedup on") for line in lines) == 2


def test_labels_and_format_errors(tmp_path) -> None:
    key = {"backend": "ort-cpu", "device": "cpu"}
    assert table_labels([key, key]) == ["ort-cpu @ cpu", "ort-cpu @ cpu (2)"]
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other", "format_version": 1, "tables": []}))
    with pytest.raises(SearchError, match="Unsupported search comparison format"):
        CompareReport.load(tmp_path / "bad.json")
