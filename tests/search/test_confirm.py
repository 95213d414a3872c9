"""`search --confirm`: the top candidates and a baseline exported over the tiny export's target and
decoded on onnxruntime CPU next to autoregressive decoding (structure, identical greedy outputs,
files written; no timing assertions on a shared CPU), which candidates a folder can run, and the
refusal of a table that is not onnxruntime CPU."""

from __future__ import annotations

import json

import pytest
from test_latency_model import synthetic_entry
from test_supernet import _one_thread  # noqa: F401

from runtime.errors import UserInputError
from runtime.tree import TreeSpec
from search.confirm import ConfirmConfig, ConfirmReport, open_artifacts, plan_runs, unfit_reason
from search.search import Candidate
from search.supernet import SubnetChoice


class _Manifest:
    """The two manifest sections `unfit_reason` reads."""

    folder = "DIR"

    def __init__(self, layers=(4,), node_budget=10):
        self.data = {"feature_layers": list(layers), "limits": {"node_budget": node_budget, "max_context": 64}}

    def __getitem__(self, key):
        return self.data[key]


class _Spec:
    def __init__(self, layers=(4,), vocab=100):
        self.feature_layers, self.draft_vocab = layers, vocab


def test_plan_takes_the_top_candidates_the_folder_can_run() -> None:
    small, big = SubnetChoice(num_layers=1), SubnetChoice(num_layers=2)
    other_layer = SubnetChoice(num_layers=2, feature_layer=3)
    specs = {small: _Spec(), big: _Spec(), other_layer: _Spec(layers=(3,))}
    t4, t32 = TreeSpec.dynamic(4, 2, 6), TreeSpec.dynamic(4, 6, 32)
    ranked = [Candidate(big, t32, 3.0, 10, 2.5, 20), Candidate(other_layer, t4, 2.5, 8, 2.4, 20),
              Candidate(big, t4, 2.2, 8, 2.2, 20), Candidate(small, t4, 2.0, 6, 2.1, 10),
              Candidate(small, t32, 2.0, 9, 1.9, 10)]
    baseline = Candidate(big, t4, 2.2, 8, 2.2, 20)
    planned, skipped = plan_runs(ranked, baseline, specs, _Manifest(), top=2)
    assert [(p.name, p.rank, p.same_as) for p in planned] == [("rank3", 3, None), ("rank4", 4, None),
                                                               ("baseline", 3, "rank3")]
    assert [s["name"] for s in skipped] == ["rank1", "rank2"]
    assert "node budget 32" in skipped[0]["reason"] and "layer(s) [3]" in skipped[1]["reason"]
    # the paper's baseline tree (N 32) does not fit a folder exported with N 10: skipped, with the reason
    planned, skipped = plan_runs(ranked[2:], Candidate(big, t32, 3.0, 10, 2.5, 20), specs, _Manifest(), top=1)
    assert [p.name for p in planned] == ["rank1"] and skipped[-1]["name"] == "baseline"
    assert unfit_reason(_Manifest(), _Spec(vocab=3), t4).startswith("tree top_k 4")
    with pytest.raises(UserInputError, match="None of the top candidates"):
        plan_runs(ranked[:2], None, specs, _Manifest(), top=2)


def test_confirm_refuses_a_table_that_is_not_onnxruntime_cpu(tmp_path) -> None:
    entry = synthetic_entry()
    entry["key"] = {**entry["key"], "backend": "trt"}
    config = ConfirmConfig(top=2, prompts=tmp_path / "p.jsonl", artifacts=tmp_path)
    with pytest.raises(UserInputError, match="decodes on onnxruntime CPU") as error:
        open_artifacts(config, entry)
    assert "--compare-table" in error.value.hint


def test_search_confirm_and_compare_end_to_end(exported_tiny, prompts_file, model_dirs, tmp_path, capsys) -> None:
    """`dream-s-edge search --compare-table --confirm 2` on the tiny target and an untrained supernet."""
    import torch

    from dream_s_edge.cli import main
    from dream_s_edge.draft.spec import DraftSpec
    from dream_s_edge.runners.draft_factory import target_dims
    from search.compare import CompareReport
    from search.latency_table import new_table, save_table
    from search.search import SearchResult
    from search.supernet import Supernet, save_supernet

    folder, adapter = exported_tiny
    torch.manual_seed(0)
    spec = DraftSpec.from_name("dream-default", target_dims(adapter))
    net = Supernet(spec, adapter.text_embedding().weight, adapter.lm_head_weight(), ("cross_attention", "concat"))
    save_supernet(net, tmp_path / "supernet")
    table = save_table(new_table([synthetic_entry()]), tmp_path / "cpu.json")
    gpu = synthetic_entry(verify_per_node=0.0)
    gpu["key"] = {**gpu["key"], "device": "gpu: test", "backend": "trt"}
    other = save_table(new_table([gpu]), tmp_path / "gpu.json")
    out = tmp_path / "out"
    code = main(["search", "--table", str(table), "--supernet", str(tmp_path / "supernet"), "--out", str(out),
                 "--model", str(model_dirs("smolvlm")), "--calibration-prompts", "1", "--max-new-tokens", "6",
                 "--max-context", "256", "--layers", "1,2", "--head-ratios", "1.0", "--ffn-ratios", "1.0",
                 "--injection-layers", "1", "--depths", "2,3", "--node-budgets", "4,6",
                 "--compare-table", str(other), "--confirm", "2", "--prompts", str(prompts_file),
                 "--artifacts", str(folder), "--baseline", "chain-4", "--confirm-max-new-tokens", "6",
                 "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "speedup on trt @ gpu: test" in printed and "greedy outputs identical to autoregressive: True" in printed

    result = SearchResult.load(out / "search.json")
    compare = CompareReport.load(out / "compare.json")
    assert compare.tables[0].result == result and (out / "compare.png").stat().st_size > 0
    assert [t.label for t in compare.tables] == ["ort-cpu @ cpu", "trt @ gpu: test"]

    report = ConfirmReport.load(out / "confirm.json")
    data = report.data
    assert data["backend"] == "ort-cpu" and data["prompts"] == 2 and data["skipped"] == []
    names = [c["name"] for c in data["candidates"]]
    assert names == ["rank1", "rank2", "baseline"]
    rank1, baseline = data["candidates"][0], data["candidates"][-1]
    assert rank1["choice"] == result.choice.to_dict() and rank1["predicted"]["speedup"] == pytest.approx(
        result.predicted_speedup)
    assert baseline["choice"]["num_layers"] == 2 and baseline["tree"]["kind"] == "static"
    for c in data["candidates"]:
        m = c["measured"]
        assert m["tau"] >= 1.0 and m["tokens_per_s"] > 0 and m["new_tokens"] > 0
        assert m["speedup"] == pytest.approx(m["tokens_per_s"] / data["autoregressive"]["tokens_per_s"])
        assert c["predicted"]["tau"] >= 1.0 and (folder / "variants" / c["variant"] / "draft_step.onnx").is_file()
    # greedy decoding: every candidate's tokens are the target's own
    assert report.greedy_identical and data["mismatched_prompts"] == []
    for row in data["per_prompt"]:
        assert row["identical"] and set(row["texts"]) == {"autoregressive", *names[:2], "baseline"}
        assert len(set(row["texts"].values())) == 1
    assert json.loads((out / "confirm.json").read_text()) == data
