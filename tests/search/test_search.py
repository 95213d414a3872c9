"""The search on synthetic latency tables: the predicted speedup formula, constraints, the typed
result's round trip, the Pareto front, and hardware awareness (a flat verify cost picks a bigger tree)."""

from __future__ import annotations

import pytest
from test_latency_model import synthetic_entry

from dream_s_edge.draft.spec import DraftSpec
from search.latency import LatencyModel, expected_tau
from search.search import (
    SearchConstraints,
    SearchError,
    SearchResult,
    pareto_front,
    predicted_step,
    search_drafts,
    tree_grid,
)
from search.supernet import SearchSpace, SubnetChoice, param_count

BASE = DraftSpec(target_hidden_size=576, target_vocab_size=49155, target_num_layers=30, num_layers=3,
                 hidden_size=576, num_heads=8, num_kv_heads=4, ffn_size=1536, attention_head_dim=72)
SPACE = SearchSpace(num_layers=(1, 2, 3), head_ratios=(0.25, 0.5, 1.0), ffn_ratios=(0.5, 1.0))
TREES = tree_grid(top_ks=(4,), depths=(2, 4, 6), node_budgets=(4, 8, 16))


def _spec(choice: SubnetChoice) -> DraftSpec:
    groups = BASE.num_heads // BASE.num_kv_heads
    kv = round(choice.head_ratio * BASE.num_kv_heads)
    return DraftSpec(**{**BASE.to_dict(), "num_layers": choice.num_layers, "num_kv_heads": kv,
                        "num_heads": kv * groups, "ffn_size": round(choice.ffn_ratio * BASE.ffn_size)})


SPECS = {c: _spec(c) for c in SPACE.choices()}


def _tau(choice: SubnetChoice, tree) -> float:
    """A synthetic τ̂: bigger drafts are accepted more often, bigger trees help."""
    alpha = 0.3 + 0.1 * choice.num_layers + 0.1 * choice.head_ratio + 0.05 * choice.ffn_ratio
    return expected_tau(tree, alpha)


def test_speedup_formula() -> None:
    model = LatencyModel(synthetic_entry())
    tree, spec = TREES[0], SPECS[SPACE.largest()]
    speedup, step, ar = predicted_step(model, spec, tree, 2.5, 256)
    assert ar == pytest.approx(model.verify_ms(1, 256))
    assert step == pytest.approx(model.step_ms(spec, tree, 256, accepted=2)["total"])
    assert speedup == pytest.approx(2.5 * ar / step)
    # fewer heads cost less in the latency model (the attention width shrinks with them)
    small = SPECS[SubnetChoice(head_ratio=0.25, num_layers=3)]
    assert model.draft_call_ms(small, "tree_step", 4, 256) < model.draft_call_ms(spec, "tree_step", 4, 256)


def test_search_respects_constraints_and_round_trips(tmp_path) -> None:
    model = LatencyModel(synthetic_entry())
    result, candidates = search_drafts(model, SPECS, TREES, _tau, param_count, provenance={"tau": "synthetic"})
    assert len(candidates) == len(SPECS) * len(TREES)
    assert result.predicted_speedup == max(c.speedup for c in candidates)
    assert result.spec == SPECS[result.choice] and result.provenance["tau"] == "synthetic"
    again = SearchResult.load(result.save(tmp_path / "search.json"))
    assert again == result
    limit = param_count(SPECS[SPACE.smallest()]) + 1
    small, kept = search_drafts(model, SPECS, TREES, _tau, param_count, constraints=SearchConstraints(max_params=limit))
    assert small.params <= limit and all(c.params <= limit for c in kept)
    with pytest.raises(SearchError, match="constraints"):
        search_drafts(model, SPECS, TREES, _tau, param_count, constraints=SearchConstraints(max_step_ms=0.1))
    front = pareto_front(candidates)
    assert all(a.step_ms <= b.step_ms and a.tau < b.tau for a, b in zip(front, front[1:], strict=False))
    assert not any(c.tau > f.tau and c.step_ms < f.step_ms for f in front for c in candidates)


def test_flat_verify_cost_picks_a_bigger_tree() -> None:
    """A CPU-like table (verify linear in the nodes) vs a GPU-like one (flat): different choices."""
    steep, _ = search_drafts(LatencyModel(synthetic_entry(verify_per_node=10.0, verify_base=10.0)), SPECS, TREES, _tau, param_count)
    flat, _ = search_drafts(LatencyModel(synthetic_entry(verify_per_node=0.0)), SPECS, TREES, _tau, param_count)
    assert flat.tree.node_budget > steep.tree.node_budget
    assert flat.predicted_speedup > steep.predicted_speedup


def test_run_search_end_to_end_on_a_tiny_target(model_dirs, tmp_path) -> None:
    """Table + supernet folder -> search.json, candidates.json and a standalone draft folder."""
    import torch

    from dream_s_edge.draft.checkpoint import load_draft
    from dream_s_edge.runners.draft_factory import target_dims
    from dream_s_edge.targets import load_target
    from search.latency_table import new_table, save_table
    from search.run import SearchConfig, run_search
    from search.supernet import Supernet, save_supernet

    torch.set_num_threads(1)
    folder = model_dirs("smolvlm")
    adapter = load_target(folder)
    torch.manual_seed(0)
    spec = DraftSpec.from_name("dream-default", target_dims(adapter))
    net = Supernet(spec, adapter.text_embedding().weight, adapter.lm_head_weight(), ("cross_attention", "concat"))
    save_supernet(net, tmp_path / "supernet")
    table = save_table(new_table([synthetic_entry()]), tmp_path / "table.json")
    config = SearchConfig(table=table, supernet=tmp_path / "supernet", out=tmp_path / "out", model=str(folder),
                          prompts=2, max_new_tokens=6, max_context=256, num_layers=(1, 2), head_ratios=(0.5, 1.0),
                          ffn_ratios=(1.0,), injection_layers=2, depths=(2, 3), node_budgets=(4, 6))
    result = run_search(config)
    assert SearchResult.load(tmp_path / "out" / "search.json") == result
    rows = __import__("json").loads((tmp_path / "out" / "candidates.json").read_text())
    assert len(rows) == 2 * 2 * 2 * 2 * 4 and any(r["pareto"] for r in rows)
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 0
    draft = load_draft(tmp_path / "out" / "draft", adapter.text_embedding().weight, adapter.lm_head_weight())
    assert draft.spec == result.spec
    # the ordinary export takes the result: its draft, and its tree as the folder's default (what the runtime reads)
    from dream_s_edge.cli import main
    from runtime.manifest import Manifest
    from runtime.session import tree_from_manifest

    search_json = str(tmp_path / "out" / "search.json")
    assert main(["export", "--out", str(tmp_path / "art"), "--model", str(folder), "--search", search_json,
                 "--max-context", "256", "--no-parity"]) == 0
    manifest = Manifest.load(tmp_path / "art")
    assert tree_from_manifest(manifest["tree"]) == result.tree
    assert {k: v for k, v in manifest["draft"]["spec"].items()} == result.spec.to_dict()
    assert main(["export", "--out", str(tmp_path / "art2"), "--model", str(folder), "--search", search_json,
                 "--draft", "untrained"]) == 2  # the result brings its own draft
    assert main(["export", "--out", str(tmp_path / "art3"), "--model", str(folder),
                 "--search", str(tmp_path / "missing.json")]) == 2


def test_search_cli_flags_reach_the_config(monkeypatch, tmp_path) -> None:
    """`dream-s-edge search` parses its flags into one SearchConfig and calls the search once."""
    from pathlib import Path

    from dream_s_edge import cli
    from search import run as run_module
    from search.compare import TableSelection
    from search.confirm import ConfirmConfig

    seen = []

    def fake_run(config):
        seen.append(config)
        spec = SPECS[SPACE.largest()]
        return run_module.SearchOutcome(SearchResult(SPACE.largest(), spec, TREES[0], 2.0, 2.5, 10.0, 8.0, 123), [])

    monkeypatch.setattr(run_module, "run_search_outcome", fake_run)
    code = cli.main(["search", "--table", "t.json", "--supernet", "sn", "--out", str(tmp_path), "--layers", "1,3",
                     "--vocab-sizes", "full,8192", "--max-params", "1000", "--prompts", "5"])
    config = seen[-1]
    assert code == 0 and config.num_layers == (1, 3) and config.draft_vocab_sizes == (None, 8192)
    assert config.max_params == 1000 and config.head_ratios == ()  # (): the supernet's training space
    assert config.injection_layers is None and config.prompts == 5
    assert config.compare is None and config.confirm is None
    code = cli.main(["search", "--table", "t.json", "--supernet", "sn", "--out", str(tmp_path),
                     "--compare-table", "gpu.json", "--compare-backend", "trt", "--calibration-prompts", "3",
                     "--confirm", "3", "--prompts", "p.jsonl", "--artifacts", "art", "--baseline", "none"])
    config = seen[-1]
    assert code == 0 and config.prompts == 3 and config.compare == TableSelection(Path("gpu.json"), backend="trt")
    assert config.confirm == ConfirmConfig(top=3, prompts=Path("p.jsonl"), artifacts=Path("art"), baseline="none")
    # --confirm without a prompts file is refused before any work
    assert cli.main(["search", "--table", "t.json", "--supernet", "sn", "--out", str(tmp_path),
                     "--confirm", "2"]) == cli.EXIT_USER_ERROR and len(seen) == 2


def test_rank_correlation() -> None:
    from search.search import rank_correlation

    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
