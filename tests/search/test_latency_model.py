"""The latency model on a synthetic table: interpolation, the additive draft model, the
acceptance curve and the tuner (including its autoregressive fallback); profiling on the tiny export."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.tree import TreeSpec
from search.latency import LatencyModel, expected_tau, fit_alpha, interp, tree_steps, tune

BASE = {"num_layers": 2, "hidden_size": 576, "num_heads": 9, "num_kv_heads": 3, "ffn_size": 1536,
        "interaction": "cross_attention", "draft_vocab_size": None, "visual_keep_ratio": 1.0}


VARIANT_SPECS = {"base": {}, "layers1": {"num_layers": 1}, "layers3": {"num_layers": 3},
                 "width384": {"hidden_size": 384, "num_heads": 6, "ffn_size": 0},
                 "width384_layers1": {"hidden_size": 384, "num_heads": 6, "ffn_size": 0, "num_layers": 1},
                 "width768": {"hidden_size": 768, "num_heads": 12, "ffn_size": 0},
                 "width768_layers1": {"hidden_size": 768, "num_heads": 12, "ffn_size": 0, "num_layers": 1},
                 "heads3": {"num_heads": 3}, "concat": {"interaction": "concat"}, "none": {"interaction": "none"},
                 "vocab8192": {"draft_vocab_size": 8192}}


def _draft_ms(layers: int, width: int, extra: float = 0.0) -> float:
    return 2.0 + layers * width / 288 + extra  # 2 ms per block at 576


def synthetic_entry(verify_per_node: float = 1.0, verify_base: float = 40.0) -> dict:
    variants = {"base": (2, 576, 0), "layers1": (1, 576, 0), "layers3": (3, 576, 0), "width384": (2, 384, 0),
                "width384_layers1": (1, 384, 0), "width768": (2, 768, 0), "width768_layers1": (1, 768, 0),
                "heads3": (2, 576, 0.5), "concat": (2, 576, -1.0), "none": (2, 576, -1.5), "vocab8192": (2, 576, -1.8)}
    draft = []
    for name, (layers, width, extra) in variants.items():
        for past in (64, 512):
            for call, new in (("advance", 1), ("advance", 4), ("tree_step", 4)):
                ms = _draft_ms(layers, width, extra) + 0.001 * past + 0.2 * new
                draft.append({"variant": name, "spec": {**BASE, **VARIANT_SPECS[name]}, "call": call, "new": new, "past": past, "ms": ms})
    verify = [{"nodes": n, "past": p, "ms": verify_base + verify_per_node * n + 0.01 * p}
              for n in (1, 2, 4, 8, 16) for p in (64, 256, 768)]
    key = {"device": "cpu", "backend": "ort-cpu", "backend_version": "1", "precision": "fp32", "model": "m V49155"}
    return {"key": key, "meta": {}, "stages": {
        "verify": verify, "prefill": [{"tokens": 32, "ms": 100.0}, {"tokens": 128, "ms": 300.0}],
        "draft": draft, "tree_host": [{"depth": 5, "top_k": 4, "nodes": 16, "ms": 2.0}]}}


def test_interpolation_extrapolates_linearly() -> None:
    assert interp(5, [0, 10], [0, 20]) == 10
    assert interp(15, [0, 10], [0, 20]) == 30 and interp(-5, [0, 10], [0, 20]) == -10
    model = LatencyModel(synthetic_entry())
    assert model.verify_ms(16, 256) == pytest.approx(40 + 16 + 2.56)
    assert model.verify_ms(12, 160) == pytest.approx(40 + 12 + 1.6)
    assert model.prefill_ms(80) == pytest.approx(200)


def test_fitted_draft_model_recovers_unmeasured_choices() -> None:
    """Calls generated from known per-feature costs: the fit predicts specs never measured."""
    from search.latency import draft_features, round_features

    entry = synthetic_entry()
    coef = np.array([1.5, 0.5, 0.03, 0.04, 0.08, 0.1, 0.05, 0.02, 0.01])
    for row in entry["stages"]["draft"]:
        row["ms"] = float(draft_features(row["spec"], row["call"], row["new"], row["past"], 576, 49155) @ coef)
    model = LatencyModel(entry)
    for spec in ({**BASE, "num_layers": 3, "hidden_size": 768, "num_heads": 12},
                 {**BASE, "num_layers": 1, "hidden_size": 384, "num_heads": 6, "interaction": "concat",
                  "draft_vocab_size": 16384}):
        want = float(draft_features(spec, "tree_step", 4, 300, 576, 49155) @ coef)
        assert model.draft_call_ms(spec, "tree_step", 4, 300) == pytest.approx(want, rel=1e-6)
    # rounds (advance + the tree) are preferred when the table has them
    tree = TreeSpec.dynamic(top_k=4, depth=5, node_budget=16)
    entry["stages"]["draft"] = [
        {"variant": v, "spec": {**BASE, **VARIANT_SPECS[v]}, "call": "round", "new": 4, "past": p,
         "tree": {"kind": "dynamic", "top_k": 4, "depth": 5, "node_budget": 16, "choices": []},
         "ms": float(round_features({**BASE, **VARIANT_SPECS[v]}, tree, 4, p, (576, 49155)) @ coef) + 2.0}
        for v in VARIANT_SPECS for p in (64, 512)]
    model = LatencyModel(entry)
    spec = {**BASE, "num_layers": 1, "hidden_size": 768, "num_heads": 12, "interaction": "none"}
    want = float(round_features(spec, tree, 4, 200, (576, 49155)) @ coef)
    got = model.step_ms(spec, tree, 200 - tree.scratch_slots, accepted=4)
    assert got["advance"] + got["tree_steps"] == pytest.approx(want, rel=1e-6)


def test_step_and_tree_steps() -> None:
    model = LatencyModel(synthetic_entry())
    tree = TreeSpec.dynamic(top_k=4, depth=5, node_budget=16)
    parts = model.step_ms(BASE, tree, 256, accepted=3)
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    assert parts["tree_host"] == pytest.approx(2.0) and tree_steps(tree) == 4
    assert tree_steps(TreeSpec.chain(4)) == 3
    keep = model.step_ms({**BASE, "visual_keep_ratio": 0.5}, tree, 256, accepted=3, visual_tokens=128)
    assert keep["total"] < parts["total"]  # a shorter draft context


def test_acceptance_curve_and_fit() -> None:
    chain = TreeSpec.chain(4)
    assert expected_tau(chain, 0.5) == pytest.approx(1 + 0.5 + 0.25 + 0.125 + 0.0625)
    wide = TreeSpec.dynamic(top_k=4, depth=4, node_budget=17)
    assert expected_tau(wide, 0.5) > expected_tau(chain, 0.5)
    counts = [10, 10, 10, 10, 10]  # τ = 3 on a chain of 4
    alpha = fit_alpha(counts, chain)
    assert expected_tau(chain, alpha) == pytest.approx(3.0, abs=1e-6)


def test_tune_picks_a_tree_or_falls_back() -> None:
    cheap = LatencyModel(synthetic_entry(verify_per_node=0.2, verify_base=80.0))
    result = tune(cheap, BASE, top_k=4, max_nodes=16, max_depth=5, max_scratch=16, alpha=0.7)
    assert result.tree is not None and result.speedup > 1.05
    best = max(result.candidates, key=lambda c: c[0])
    assert (best[1].top_k, best[1].depth, best[1].node_budget) == (
        result.tree.top_k, result.tree.depth, result.tree.node_budget)
    # one more node costs 0.2 ms of verify; the pass yields tau tokens in step ms
    assert result.tree.min_prob == pytest.approx(0.2 * result.tau / result.step_ms, abs=1e-3)
    assert f"{result.tree.min_prob:.3f}" in result.message
    costly = LatencyModel(synthetic_entry(verify_per_node=10.0, verify_base=5.0))
    result = tune(costly, BASE, top_k=4, max_nodes=16, max_depth=5, max_scratch=16, alpha=0.1)
    assert result.tree is None and "would not pay" in result.message


def test_break_even_prob_follows_the_marginal_verify_cost() -> None:
    from search.latency import MAX_MIN_PROB, break_even_prob

    tree = TreeSpec.dynamic(top_k=4, depth=6, node_budget=16)
    model = LatencyModel(synthetic_entry(verify_per_node=1.5, verify_base=30.0))
    # a node costs 1.5 ms; a pass of 60 ms that yields 4 tokens makes a token every 15 ms
    assert break_even_prob(model, tree, 256, tau=4.0, step_ms=60.0) == pytest.approx(0.1)
    assert break_even_prob(model, tree, 256, tau=4.0, step_ms=120.0) == pytest.approx(0.05)
    free = LatencyModel(synthetic_entry(verify_per_node=0.0))
    assert break_even_prob(free, tree, 256, tau=4.0, step_ms=60.0) == 0.0
    dear = LatencyModel(synthetic_entry(verify_per_node=50.0))
    assert break_even_prob(dear, tree, 256, tau=4.0, step_ms=60.0) == MAX_MIN_PROB
    assert break_even_prob(model, tree, 256, tau=4.0, step_ms=0.0) == 0.0


def test_profile_entry_on_the_tiny_export(exported_tiny, tmp_path) -> None:
    """Every stage is measured and the entry validates; the plot is written."""
    from runtime.manifest import Manifest
    from search.latency_table import new_table, validate
    from search.profile import Backend, ProfileGrid, measure_target, plot_verify

    manifest = Manifest.load(exported_tiny[0])
    backend = Backend("ort-cpu", threads=1)
    target = backend.target(manifest)
    grid = ProfileGrid(prefill=(8, 16), nodes=(1, 4), past=(8, 32), repeats=1)
    stages = measure_target(target, grid, np.random.default_rng(0), manifest)
    assert [r["tokens"] for r in stages["prefill"]] == [8, 16] and len(stages["verify"]) == 4
    entry = {"key": backend.key(manifest), "meta": {}, "stages": stages}
    validate(new_table([entry]))
    assert (tmp_path / "v.png").name in plot_verify(entry, tmp_path / "v.png")
