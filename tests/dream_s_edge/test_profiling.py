"""`accept_from_report`: the acceptance histogram and the tree it was measured with, from bench reports."""

from __future__ import annotations

import json

import pytest

from dream_s_edge.profiling import accept_from_report
from runtime.errors import UserInputError
from runtime.tree import TreeSpec


def test_an_onnxruntime_bench_report_gives_its_tree(tmp_path) -> None:
    """ort-* benches leave the tree flags None (the folder's tree is used) and record the tree itself."""
    tree = TreeSpec.dynamic(top_k=4, depth=8, node_budget=16, min_prob=0.05)
    report = {"config": {"top_k": None, "depth": None, "node_budget": None},
              "tree": tree.to_dict(), "tau": {"mean": 4.2, "histogram": [3, 2, 1, 0, 0, 0, 0, 0, 1]}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    counts, found = accept_from_report(path)
    assert counts == [3, 2, 1, 0, 0, 0, 0, 0, 1]
    assert found == tree


def test_an_older_report_gives_the_tree_flags(tmp_path) -> None:
    report = {"config": {"top_k": 3, "depth": 4, "node_budget": 10}, "tau": {"histogram": [1, 1, 1, 1, 1]}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    counts, found = accept_from_report(path)
    assert counts == [1, 1, 1, 1, 1] and found == TreeSpec.dynamic(top_k=3, depth=4, node_budget=10)


def test_a_report_without_a_histogram_is_refused(tmp_path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(UserInputError, match="no accept_counts"):
        accept_from_report(path)
