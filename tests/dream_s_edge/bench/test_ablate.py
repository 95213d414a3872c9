"""`dream-s-edge bench --ablate` (dream_s_edge/bench/ablate.py) on tiny drafts of the tiny target: one
combined JSON, a markdown table with the commands that produced it, the plots, and every row a full
bench run on the same runner. Structural assertions only (no timing)."""

from __future__ import annotations

import json
import shlex

import pytest

from dream_s_edge.bench.ablate import AblationConfig, entry_config, parse_entries
from dream_s_edge.bench.run import BenchConfig
from dream_s_edge.cli import EXIT_USER_ERROR, build_parser, main
from runtime.errors import UserInputError


@pytest.fixture(scope="module")
def drafts(targets, tmp_path_factory):
    """name -> a saved untrained draft of the tiny SmolVLM: cross-attention (keeps 75% of visual tokens)
    and EAGLE-style concatenation (keeps all)."""
    from dream_s_edge.draft.checkpoint import save_draft
    from dream_s_edge.runners.draft_factory import untrained_draft

    adapter = targets("smolvlm")
    folder = tmp_path_factory.mktemp("ablate-drafts")
    out = {}
    for name, preset in (("cross", "dream-default"), ("concat", "eagle")):
        model = untrained_draft(adapter, preset=preset, seed=1)
        out[name] = save_draft(folder / name, model, model.spec, target_name="tiny-smolvlm")
    return out


@pytest.fixture(scope="module")
def prompts(tmp_path_factory, image):
    folder = tmp_path_factory.mktemp("ablate-prompts")
    image.save(folder / "picture.png")
    path = folder / "prompts.jsonl"
    lines = [{"image": str(folder / "picture.png"), "question": "What is in the picture?"},
             {"image": None, "question": "Say hello."}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def bench_args(prompts, model_dirs, out) -> list[str]:
    return ["bench", "--prompts", str(prompts), "--json", str(out), "--model", str(model_dirs("smolvlm")),
            "--no-hf", "--max-new-tokens", "6", "--max-context", "256", "--threads", "1"]


def test_ablation_table_json_and_plots(drafts, prompts, model_dirs, tmp_path, capsys) -> None:
    out, table = tmp_path / "ablations.json", tmp_path / "docs" / "ablations.md"
    code = main([*bench_args(prompts, model_dirs, out), "--ablate", f"cross={drafts['cross']}",
                 f"concat={drafts['concat']}", "untrained=untrained", "--table", str(table)])
    assert code == 0
    printed = capsys.readouterr().out
    assert all(f"{name}: tau" in printed for name in ("cross", "concat", "untrained"))
    combined = json.loads(out.read_text())
    assert combined["format"] == "dream-s-edge-ablation" and combined["format_version"] == 1
    assert combined["backend"] == "torch" and combined["prompts"] == 2 and set(combined["reports"]) == {
        "cross", "concat", "untrained"}
    rows = {row["name"]: row for row in combined["rows"]}
    assert [row["name"] for row in combined["rows"]] == ["cross", "concat", "untrained"]
    assert rows["cross"]["interaction"] == "cross_attention" and rows["cross"]["visual_keep_ratio"] == 0.75
    assert rows["concat"]["interaction"] == "concat" and rows["concat"]["visual_keep_ratio"] == 1.0
    for name, row in rows.items():
        report = combined["reports"][name]
        assert row["tau"] == report["tau"]["mean"] >= 1.0 and row["speedup"] == report["speedup"] > 0
        assert set(row["tokens_per_s"]) == {"autoregressive", "speculative"}
        assert row["greedy_identical"] and row["identical_prompts"] == row["prompts"] == 2
        assert row["feature_layers"] == report["draft"]["spec"]["feature_layers"]
        assert report["config"]["attention"] == "eager"  # one target runner for every row (cross prunes)
        assert report["config"]["draft"] == row["draft"] and report["config"]["prompts"] == str(prompts)
        assert json.loads((tmp_path / "ablations-runs" / f"{name}.json").read_text())["tau"] == report["tau"]
        assert (tmp_path / "ablations-runs" / f"{name}.png").is_file()
    assert out.with_suffix(".png").stat().st_size > 1000 and table.with_suffix(".png").stat().st_size > 1000
    text = table.read_text()
    assert "| name | draft | interaction | early target | feature layers | visual keep | τ mean |" in text
    assert all(row["early_target"] is None for row in rows.values())  # untrained: no distillation record
    assert all(row["decode_speedup"] == combined["reports"][n]["decode_speedup"] for n, row in rows.items())
    assert "![τ, tokens/s and speedup per draft](ablations.png)" in text and "## Commands" in text
    for name, row in rows.items():
        assert f"| {name} | `{row['draft']}` |" in text and f"    {row['command']}" in text
    assert f"    {combined['command']}" in text and f"cross={drafts['cross']}" in combined["command"]


def test_row_commands_reproduce_the_row_configs(drafts, prompts, model_dirs, tmp_path) -> None:
    """Each listed command, parsed by the CLI, gives back the bench config of its row."""
    from dream_s_edge.bench.ablate import bench_command

    base = BenchConfig(prompts=str(prompts), json_out=str(tmp_path / "a.json"), model=str(model_dirs("smolvlm")),
                       max_new_tokens=6, hf=False, threads=1, top_k=3)
    config = AblationConfig(bench=base, entries=(("concat", str(drafts["concat"])),))
    row = entry_config(config, "concat", str(drafts["concat"]))
    assert row.attention == "sdpa" and row.json_out == str(tmp_path / "a-runs" / "concat.json")
    args = build_parser().parse_args(shlex.split(shlex.join(bench_command(row)))[1:])
    for field, value in (("prompts", row.prompts), ("json_out", row.json_out), ("model", row.model),
                         ("draft", row.draft), ("max_new_tokens", 6), ("hf", False), ("threads", 1),
                         ("top_k", 3), ("attention", "sdpa"), ("max_context", 1024), ("backend", "torch")):
        assert getattr(args, field) == value


def test_bad_ablation_entries(drafts, prompts, model_dirs, tmp_path, capsys) -> None:
    for items, words in ((["a"], "NAME=DRAFT_FOLDER"), (["a=x", "a=y"], "appears twice"),
                         (["../a=x"], "file name"), ([], "at least one")):
        with pytest.raises(UserInputError, match=words):
            parse_entries(items)
    out = tmp_path / "x.json"
    cases = (
        (["--ablate", f"a={tmp_path / 'missing'}"], "is not a draft folder"),
        (["--ablate", f"a={drafts['cross']}", "--draft", "untrained"], "--draft cannot be given"),
        (["--table", str(tmp_path / "t.md")], "--table needs --ablate"),
    )
    for extra, words in cases:
        assert main([*bench_args(prompts, model_dirs, out), *extra]) == EXIT_USER_ERROR
        assert words in capsys.readouterr().err
    assert not out.exists()


def test_ablation_over_exported_folders(exported_tiny, prompts, tmp_path) -> None:
    """On a runtime backend each entry is an exported folder (it carries its draft)."""
    from dream_s_edge.bench.ablate import run_ablation

    folder = str(exported_tiny[0])
    base = BenchConfig(prompts=str(prompts), json_out=str(tmp_path / "ort.json"), backend="ort-cpu",
                       max_new_tokens=4, hf=False, threads=1)
    combined = run_ablation(AblationConfig(bench=base, entries=(("one", folder), ("two", folder))))
    assert [row["name"] for row in combined["rows"]] == ["one", "two"] and combined["backend"] == "ort-cpu"
    for row in combined["rows"]:
        assert row["interaction"] == "cross_attention" and row["greedy_identical"]
        assert f"--artifacts {folder}" in row["command"] and "--draft" not in row["command"]
    assert (tmp_path / "ort.png").is_file() and not (tmp_path / "ort.md").exists()
    with pytest.raises(UserInputError, match="--artifacts cannot be given"):
        run_ablation(AblationConfig(bench=BenchConfig(prompts=str(prompts), json_out="x.json", backend="ort-cpu",
                                                      artifacts=folder), entries=(("one", folder),)))
    with pytest.raises(UserInputError, match="not an exported folder"):
        run_ablation(AblationConfig(bench=base, entries=(("one", str(tmp_path)),)))


def test_early_target_reads_the_distillation_record(tmp_path) -> None:
    from dream_s_edge.bench.ablate import early_target

    def draft(name, train_config):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"distillation": {"train_config": train_config}}))
        return str(tmp_path / name)

    assert early_target(draft("dream", {"intermed_weight": 0.2})) == "entropy layer"
    assert early_target(draft("last", {"intermed_weight": 0.2, "intermed_source": "last"})) == "last layer"
    assert early_target(draft("off", {"intermed_weight": 0.0})) == "none"
    assert early_target(str(tmp_path / "missing")) is None and early_target("oracle") is None
