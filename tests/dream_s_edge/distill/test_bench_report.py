"""`dream-s-edge bench` on a tiny target: the JSON report's structure, the plot, the backend registry."""

from __future__ import annotations

import json

import pytest

from dream_s_edge.bench import BACKENDS, BenchConfig, make_backend, read_prompts
from dream_s_edge.cli import main
from runtime.errors import UserInputError


def test_bench_json(tiny_data_dir, tiny_target_dir, tmp_path):
    out = tmp_path / "bench.json"
    code = main(["bench", "--backend", "torch", "--prompts", str(tiny_data_dir / "heldout.jsonl"),
                 "--json", str(out), "--model", str(tiny_target_dir), "--draft", "untrained",
                 "--max-new-tokens", "8", "--max-context", "256", "--limit", "2", "--threads", "1"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["backend"] == "torch" and report["prompts"] == 2
    tau = report["tau"]
    assert len(tau["histogram"]) == 6 and sum(tau["histogram"]) == tau["passes"] > 0
    assert tau["mean"] == pytest.approx(sum((a + 1) * c for a, c in enumerate(tau["histogram"])) / tau["passes"])
    assert set(report["tokens_per_s"]) == {"autoregressive", "speculative"}
    assert report["speedup"] == pytest.approx(report["tokens_per_s"]["speculative"]
                                              / report["tokens_per_s"]["autoregressive"])
    rows = report["per_prompt"]
    for method, rate in report["decode_tokens_per_s"].items():  # prefill and the first token left out
        tokens = sum(r["tokens"][method] - 1 for r in rows)
        seconds = sum(r[method]["wall_s"] - r[method]["prefill_s"] for r in rows)
        assert rate == pytest.approx(tokens / seconds)
    assert report["decode_speedup"] == pytest.approx(report["decode_tokens_per_s"]["speculative"]
                                                     / report["decode_tokens_per_s"]["autoregressive"])
    ar, spec = report["time_split"]["autoregressive"], report["time_split"]["speculative"]
    assert report["limits"]["prefill_share"] == pytest.approx(spec["prefill_s"] / spec["wall_s"])
    assert 0 < report["limits"]["prefill_share"] < 1
    assert report["limits"]["zero_cost_draft_speedup"] == pytest.approx(
        ar["wall_s"] / (ar["prefill_s"] + spec["verify_s"] + spec["host_s"]))
    assert report["greedy_identical"] is True and report["mismatched_prompts"] == []
    assert out.with_suffix(".png").stat().st_size > 1000


def test_registry_and_prompt_errors(tmp_path):
    assert "torch" in BACKENDS
    with pytest.raises(UserInputError, match="Unknown bench backend"):
        make_backend(BenchConfig(prompts="x", json_out="y", backend="nope"))
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"image": null, "question": "hi"}\n{"image": null}\n')
    with pytest.raises(UserInputError, match="p.jsonl:2"):
        read_prompts(bad)
