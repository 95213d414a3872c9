"""`dream-s-edge tau-check` on a tiny target and an untrained supernet: the report's structure (no
claim on the correlation's value), the sub-network pick, and the rank correlations with and without scipy."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from test_supernet import _one_thread  # noqa: F401

from search.correlate import TauCheckConfig, kendall_tau_b, pick_subnets, rank_correlations, run_tau_check
from search.supernet import SearchSpace


@pytest.fixture(scope="module")
def tiny_supernet_dir(model_dirs, tmp_path_factory):
    from dream_s_edge.draft.spec import DraftSpec
    from dream_s_edge.runners.draft_factory import target_dims
    from dream_s_edge.targets import load_target
    from search.supernet import Supernet, save_supernet

    adapter = load_target(model_dirs("smolvlm"))
    torch.manual_seed(0)
    spec = DraftSpec.from_name("dream-default", target_dims(adapter))
    net = Supernet(spec, adapter.text_embedding().weight, adapter.lm_head_weight())
    return save_supernet(net, tmp_path_factory.mktemp("supernet"))


def test_tau_check_report(model_dirs, tiny_supernet_dir, tmp_path) -> None:
    config = TauCheckConfig(supernet=tiny_supernet_dir, out=tmp_path / "tau_check.json", model=str(model_dirs("smolvlm")),
                            subnets=10, prompts=1, measure_prompts=1, max_new_tokens=4, max_context=256, depth=2,
                            node_budget=4)
    report = run_tau_check(config)
    assert json.loads(config.out.read_text()) == {k: v for k, v in report.items() if k != "plot"}
    assert (tmp_path / "tau_check.png").stat().st_size > 0
    rows = report["subnets"]
    assert len(rows) == 10 and len({json.dumps(r["choice"], sort_keys=True) for r in rows}) == 10
    # the space derived for a supernet saved without training: both layers, whole KV groups, both depths
    assert report["space"]["feature_layers"] == [1, 2] and report["space"]["head_ratios"] == [0.5, 1.0]
    assert rows[0]["choice"]["num_layers"] == 2 and rows[1]["choice"]["num_layers"] == 1  # largest, smallest
    for row in rows:
        assert row["tau_hat"] >= 1.0 and row["tau"] >= 1.0 and row["params"] > 0
        assert sum(row["accept_counts"]) > 0 and sum(row["tau_hat_accept_counts"]) > 0
    for name in ("spearman", "kendall"):
        assert report[name] is None or -1.0 <= report[name] <= 1.0
    assert report["method"].startswith(("scipy", "numpy", "undefined")) and set(report["seconds"]) == {"record", "estimate", "measure"}
    assert report["calibration_prompts"] != report["measure_prompts"] and not report["same_prompts"]


def test_pick_subnets_puts_the_extremes_first() -> None:
    space = SearchSpace(interactions=("cross_attention", "concat"), num_layers=(1, 2), head_ratios=(0.5, 1.0))
    picked = pick_subnets(space, 12, seed=0)
    assert picked[:4] == [space.largest("cross_attention"), space.smallest("cross_attention"),
                          space.largest("concat"), space.smallest("concat")]
    assert len(set(picked)) == 12 and picked == pick_subnets(space, 12, seed=0)
    assert len(pick_subnets(SearchSpace(num_layers=(1,), head_ratios=(1.0,), ffn_ratios=(1.0,)), 12, 0)) == 1


def test_rank_correlations_match_scipy_and_the_fallback(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 15).astype(float)  # with ties
    b = a + rng.normal(0, 1.5, 15)
    with_scipy = rank_correlations(a, b)
    monkeypatch.setitem(sys.modules, "scipy", None)  # as if scipy were not installed
    without = rank_correlations(a, b)
    assert without["method"] == "numpy"
    if with_scipy["method"].startswith("scipy"):
        assert without["spearman"] == pytest.approx(with_scipy["spearman"])
        assert without["kendall"] == pytest.approx(with_scipy["kendall"])
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))
    assert rank_correlations([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["spearman"] is None
