"""`dream-s-edge bench --backend ort-cpu` on the tiny exported artifacts: the JSON (τ, tokens/s, speedup,
greedy AR == speculative, HF generate as reference), the plot, and the trt backend's clean refusal."""

from __future__ import annotations

import importlib.util
import json

import pytest

from dream_s_edge.bench import BACKENDS, BenchConfig, make_backend
from dream_s_edge.cli import EXIT_USER_ERROR, main
from runtime.errors import EngineError, UserInputError


def test_bench_ort_cpu_json(exported_tiny, prompts_file, tmp_path):
    folder, _ = exported_tiny
    manifest = json.loads((folder / "manifest.json").read_text())
    out = tmp_path / "bench.json"
    code = main(["bench", "--backend", "ort-cpu", "--artifacts", str(folder), "--prompts", str(prompts_file),
                 "--json", str(out), "--max-new-tokens", "8", "--threads", "1"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["backend"] == "ort-cpu" and report["prompts"] == 2
    assert report["device"].startswith("onnxruntime cpu")
    tree = manifest["tree"]
    assert report["tree"]["depth"] == tree["depth"] and report["tree"]["node_budget"] == tree["node_budget"]
    tau = report["tau"]
    assert len(tau["histogram"]) == tree["depth"] + 1 and sum(tau["histogram"]) == tau["passes"] > 0
    assert tau["mean"] == pytest.approx(sum((a + 1) * c for a, c in enumerate(tau["histogram"])) / tau["passes"])
    rates = report["tokens_per_s"]
    assert set(rates) == {"autoregressive", "speculative"} and min(rates.values()) > 0
    assert report["speedup"] == pytest.approx(rates["speculative"] / rates["autoregressive"])
    assert set(report["time_split"]["speculative"]) >= {"prefill_s", "draft_s", "verify_s", "host_s", "wall_s"}
    # greedy: the speculative loop reproduces autoregressive decoding token for token
    assert report["greedy_identical"] is True and report["mismatched_prompts"] == []
    assert report["identical_prompts"] == 2
    assert all(r["identical"] for r in report["per_prompt"])
    # HF generate on the PyTorch model the artifacts came from, timed on the same prompts
    hf = report["hf_generate"]
    assert hf["model"] == manifest["target"]["source_model"]
    assert hf["tokens_per_s"] > 0 and hf["new_tokens"] > 0 and 0 <= hf["identical_to_autoregressive"] <= 2
    assert report["ar_vs_hf"] == pytest.approx(rates["autoregressive"] / hf["tokens_per_s"])
    assert all("hf_generate" in r for r in report["per_prompt"])
    assert out.with_suffix(".png").stat().st_size > 1000


def test_bench_ort_cpu_without_hf(exported_tiny, prompts_file, tmp_path):
    folder, _ = exported_tiny
    out = tmp_path / "bench.json"
    code = main(["bench", "--backend", "ort-cpu", "--artifacts", str(folder), "--prompts", str(prompts_file),
                 "--json", str(out), "--max-new-tokens", "6", "--limit", "1", "--no-hf", "--threads", "1",
                 "--node-budget", "6"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["hf_generate"] is None and report["ar_vs_hf"] is None
    assert report["tree"]["node_budget"] == 6 and report["greedy_identical"] is True


def test_runtime_backends_registered_and_need_artifacts():
    assert {"torch", "ort-cpu", "ort-cuda", "trt"} <= set(BACKENDS)
    with pytest.raises(UserInputError, match="--artifacts"):
        make_backend(BenchConfig(prompts="x", json_out="y", backend="ort-cpu"))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_trt_backend_refuses_without_tensorrt(exported_tiny, prompts_file, tmp_path, capsys):
    folder, _ = exported_tiny
    with pytest.raises(EngineError, match="TensorRT"):
        make_backend(BenchConfig(prompts=str(prompts_file), json_out=str(tmp_path / "b.json"), backend="trt",
                                 artifacts=str(folder)))
    code = main(["bench", "--backend", "trt", "--artifacts", str(folder), "--prompts", str(prompts_file),
                 "--json", str(tmp_path / "b.json"), "--no-hf"])
    assert code == EXIT_USER_ERROR
    assert "TensorRT" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
