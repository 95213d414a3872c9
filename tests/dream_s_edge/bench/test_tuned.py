"""`dream-s-edge tune --measure` on the tiny exported artifacts: the tuner's choice (a tree, or the
autoregressive fallback) and the default tree decode the same prompts side by side; the JSON report
has every setting's tokens/s and speedup, and all settings give the same greedy text. No timing
assertions (a shared CPU); synthetic latency tables steer the tuner to each branch."""

from __future__ import annotations

import json

import pytest

from dream_s_edge.bench.tuned import SETTINGS
from dream_s_edge.cli import EXIT_USER_ERROR, main
from runtime.manifest import Manifest
from search.latency_table import new_table, save_table
from search.profile import spec_choice


def table_for(folder, path, verify_base: float, verify_per_node: float, draft_ms: float):
    """A one-entry latency table for the tiny export: verify = base + per_node * N, flat draft calls."""
    manifest = Manifest.load(folder)
    target, spec = manifest["target"], spec_choice(manifest["draft"]["spec"])
    draft = [{"variant": "base", "spec": spec, "call": call, "new": new, "past": past,
              "ms": draft_ms + 0.01 * new + 0.001 * past}
             for past in (8, 32) for call, new in (("advance", 1), ("advance", 4), ("tree_step", 3))]
    verify = [{"nodes": n, "past": p, "ms": verify_base + verify_per_node * n} for n in (1, 2, 4, 8, 10) for p in (8, 32)]
    key = {"device": "cpu: test", "backend": "ort-cpu", "backend_version": "1", "precision": "fp32",
           "model": f"tiny H{target['hidden_size']} V{target['vocab_size']}"}
    stages = {"verify": verify, "prefill": [{"tokens": 8, "ms": 5.0}, {"tokens": 16, "ms": 9.0}], "draft": draft,
              "tree_host": [{"depth": 4, "top_k": 3, "nodes": 10, "ms": 0.05}]}
    return save_table(new_table([{"key": key, "meta": {}, "stages": stages}]), path, merge=False)


def run_measure(capsys, folder, table, prompts, out, *extra) -> dict:
    code = main(["tune", "--table", str(table), "--artifacts", str(folder), "--measure", "--prompts", str(prompts),
                 "--json", str(out), "--max-new-tokens", "8", "--threads", "1", "--past", "16", *extra])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads(out.read_text())
    assert printed == {k: v for k, v in report.items() if k != "per_prompt"}
    return report


def check_common(report: dict, manifest: dict) -> None:
    assert report["format"] == "dream-s-edge-tune-measure" and report["format_version"] == 1
    assert report["backend"] == "ort-cpu" and report["prompts"] == 2 and report["table_key"]["device"] == "cpu: test"
    settings = report["settings"]
    assert list(settings) == list(SETTINGS)
    ar = settings["autoregressive"]
    assert ar["tree"] is None and ar["speedup"] == 1.0
    default = settings["default"]
    assert {k: default["tree"][k] for k in ("kind", "top_k", "depth", "node_budget")} == \
        {k: manifest["tree"][k] for k in ("kind", "top_k", "depth", "node_budget")}
    for s in settings.values():
        assert s["tokens_per_s"] > 0 and s["new_tokens"] > 0 and s["wall_s"] > 0 and s["tau"] >= 1.0
        assert s["speedup"] == pytest.approx(s["tokens_per_s"] / ar["tokens_per_s"])
    assert report["tuned_vs_default"] == pytest.approx(settings["tuned"]["tokens_per_s"] / default["tokens_per_s"])
    assert report["tuned_at_least_default"] == (report["tuned_vs_default"] >= 1.0)
    # greedy decoding: every setting gives the target's own text, token for token
    assert report["greedy_identical"] is True and report["mismatched_prompts"] == []
    for row in report["per_prompt"]:
        assert row["identical"] and set(row["texts"]) == set(SETTINGS) and len(set(row["texts"].values())) == 1
        assert row["settings"]["tuned"]["new_tokens"] == row["settings"]["autoregressive"]["new_tokens"]


def test_tuned_tree_against_the_default_tree(exported_tiny, prompts_file, tmp_path, capsys) -> None:
    folder, _ = exported_tiny
    manifest = json.loads((folder / "manifest.json").read_text())
    # verify cost grows steeply with nodes: the tuner picks a smaller tree than the exported one
    table = table_for(folder, tmp_path / "pays.json", verify_base=20.0, verify_per_node=4.0, draft_ms=0.2)
    report = run_measure(capsys, folder, table, prompts_file, tmp_path / "pays-report.json")
    check_common(report, manifest)
    tuner = report["tuner"]
    assert tuner["choice"] == "speculative" and tuner["expected_speedup"] > 1.05
    tuned, default = report["settings"]["tuned"], report["settings"]["default"]
    assert tuned["tree"] == tuner["tree"] and tuned["tree"]["top_k"] == manifest["draft"]["top_k"]
    assert tuned["tree"]["node_budget"] < manifest["limits"]["node_budget"]
    assert tuned["tree"]["depth"] <= min(manifest["draft"]["max_depth"], tuned["tree"]["node_budget"] - 1)
    assert tuned["tree"] != default["tree"] and tuned["same_as"] is None  # measured on its own


def test_autoregressive_fallback_against_the_default_tree(exported_tiny, prompts_file, tmp_path, capsys) -> None:
    folder, _ = exported_tiny
    manifest = json.loads((folder / "manifest.json").read_text())
    table = table_for(folder, tmp_path / "costly.json", verify_base=1.0, verify_per_node=10.0, draft_ms=5.0)
    report = run_measure(capsys, folder, table, prompts_file, tmp_path / "costly-report.json", "--limit", "2")
    check_common(report, manifest)
    assert report["tuner"]["choice"] == "autoregressive" and report["tuner"]["tree"] is None
    assert "would not pay" in report["tuner"]["message"]
    tuned = report["settings"]["tuned"]
    assert tuned["tree"] is None and tuned["same_as"] == "autoregressive" and tuned["speedup"] == 1.0
    assert report["settings"]["default"]["same_as"] is None


def test_measure_refuses_bad_requests(exported_tiny, prompts_file, tmp_path, capsys) -> None:
    folder, _ = exported_tiny
    table = table_for(folder, tmp_path / "t.json", verify_base=100.0, verify_per_node=0.1, draft_ms=0.2)
    common = ["tune", "--table", str(table), "--artifacts", str(folder), "--measure"]
    assert main(common) == EXIT_USER_ERROR  # no prompts
    assert "--prompts" in capsys.readouterr().err
    # eagle2 (top_k 4) cannot run on a draft exported with top_k 3
    assert main([*common, "--prompts", str(prompts_file), "--baseline", "eagle2"]) == EXIT_USER_ERROR
    assert "top_k" in capsys.readouterr().err
    assert main([*common, "--prompts", str(prompts_file), "--baseline", "nope"]) == EXIT_USER_ERROR
