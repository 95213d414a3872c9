"""`train --supernet` on a tiny target: the phase switch at the configured step, exact resume after a
kill (before and after the switch), the output folder read by `search`, the CLI flags, and two gloo
processes under torchrun staying in sync."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dream_s_edge.default_draft import TOKEN_COUNTS_FILE
from dream_s_edge.distill import TrainConfig, draft_from_checkpoint, train_draft
from dream_s_edge.distill.train_state import CHECKPOINT_DIR, STATE_FILE, read_log
from search.supernet import SUPERNET_WEIGHTS, load_supernet
from search.supernet_train import SupernetOptions, trained_space

N1 = 3


def _config(data, target, out, options: SupernetOptions | None = None, **overrides) -> TrainConfig:
    options = options or SupernetOptions(phase1_steps=N1, random_subnets=1)
    values = dict(data_dir=str(data), out_dir=str(out), model=str(target), steps=6, save_every=2, warmup=2,
                  ttt_steps=1, feature_noise=0.05, val_prompts=1, val_max_new_tokens=4, supernet=options)
    return TrainConfig(**{**values, **overrides})


def _synthetic_entry() -> dict:
    """The search tests' synthetic latency table entry (tests/search/test_latency_model.py)."""
    path = Path(__file__).parents[2] / "search" / "test_latency_model.py"
    spec = importlib.util.spec_from_file_location("_latency_entries", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_entry()


def _weights(folder) -> dict[str, torch.Tensor]:
    return torch.load(folder / SUPERNET_WEIGHTS, weights_only=True)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def whole(tiny_supernet_data_dir, tiny_target_dir, tmp_path_factory):
    """An uninterrupted 6-step run (phase switch after step 3) and its folder."""
    out = tmp_path_factory.mktemp("whole")
    return train_draft(_config(tiny_supernet_data_dir, tiny_target_dir, out)), out


def test_phase_switch_happens_at_the_configured_step(whole) -> None:
    folder, run = whole
    log = read_log(run)
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert [r["phase"] for r in steps] == [1, 1, 1, 2, 2, 2]
    assert [len(r["subnets"]) for r in steps] == [1, 1, 1, 3, 3, 3]  # largest; largest, smallest, random
    switches = [r for r in log if "phase_switch" in r]
    assert switches == [{"step": N1, "phase_switch": "taylor"}]
    assert log.index(switches[0]) == N1  # right after step 3's record, before step 4
    assert all("kd_smallest" in r and "kl_random1" in r for r in steps[N1:])
    assert not any("kd_smallest" in r for r in steps[:N1])
    val = [r for r in log if "val_tau" in r]
    assert val and "val_tau_smallest" in val[-1]


def test_output_is_a_supernet_that_search_reads(whole, tiny_target_dir, tmp_path) -> None:
    from dream_s_edge.targets import load_target
    from search.latency_table import new_table, save_table
    from search.run import SearchConfig, run_search
    from search.supernet import SubnetChoice

    folder, _ = whole
    assert folder.name == "supernet"
    record = json.loads((folder / "supernet.json").read_text())["training"]
    assert record["world_size"] == 1 and record["validation"]["tau"] >= 1.0
    assert set(record["validation_by_draft"]) == {"largest", "smallest"}
    space = trained_space(folder)
    assert space.feature_layers == (1, 2) and space.head_ratios == (0.5, 1.0) and space.num_layers == (1, 2)
    adapter = load_target(tiny_target_dir)
    net = load_supernet(folder, adapter.text_embedding().weight, adapter.lm_head_weight())
    assert net(SubnetChoice(feature_layer=1, head_ratio=0.5), torch.zeros(1, 3, 64), torch.zeros(1, 3, 64)).logits.shape[-1] == \
        adapter.spec.vocab_size
    table = save_table(new_table([_synthetic_entry()]), tmp_path / "table.json")
    # no grid flags but one: the rest comes from the training space recorded in supernet.json
    result = run_search(SearchConfig(table=table, supernet=folder, out=tmp_path / "out", model=str(tiny_target_dir),
                                     prompts=1, max_new_tokens=4, max_context=256, ffn_ratios=(1.0,), depths=(2,),
                                     node_budgets=(4,)))
    rows = json.loads((tmp_path / "out" / "candidates.json").read_text())
    seen = {key: {r["choice"][key] for r in rows} for key in rows[0]["choice"]}
    assert seen["feature_layer"] == {1, 2} and seen["head_ratio"] == {0.5, 1.0} and seen["ffn_ratio"] == {1.0}
    assert seen["visual_keep_ratio"] == {0.75, 1.0} and len(rows) == 2 * 2 * 2 * 2
    assert result.spec.num_layers in (1, 2) and (tmp_path / "out" / "draft" / "config.json").is_file()
    # the data's answer-token counts travel with the supernet to the chosen draft: export can prune its vocabulary
    counts = np.load(folder / TOKEN_COUNTS_FILE)
    assert counts.sum() > 0 and np.array_equal(np.load(tmp_path / "out" / "draft" / TOKEN_COUNTS_FILE), counts)
    from dream_s_edge.cli import main

    assert main(["export", "--out", str(tmp_path / "art"), "--model", str(tiny_target_dir), "--search",
                 str(tmp_path / "out" / "search.json"), "--draft-vocab", "8", "--max-context", "256",
                 "--no-parity"]) == 0
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["draft"]["spec"]["draft_vocab_size"] == 8


@pytest.mark.parametrize("halt", [N1, N1 + 2])  # killed before the switch's checkpoint, and after it
def test_resume_after_kill_matches_an_uninterrupted_run(whole, tiny_supernet_data_dir, tiny_target_dir, tmp_path,
                                                        halt) -> None:
    folder, run = whole
    train_draft(_config(tiny_supernet_data_dir, tiny_target_dir, tmp_path, halt_after=halt))
    state = torch.load(tmp_path / CHECKPOINT_DIR / STATE_FILE, weights_only=False)
    assert state["step"] == halt - 1  # the last checkpoint; the step after it is lost
    if state["step"] < N1:  # phase 1's Taylor sums are part of the checkpoint
        assert state["strategy"]["taylor"]
    resumed = train_draft(_config(tiny_supernet_data_dir, tiny_target_dir, tmp_path))
    assert _same(_weights(folder), _weights(resumed))
    log_a, log_b = read_log(run), read_log(tmp_path)
    assert [r["step"] for r in log_b if r.get("resumed")] == [halt - 1]
    log_b = [r for r in log_b if not r.get("resumed")]
    assert [r.get("loss") for r in log_a] == [r.get("loss") for r in log_b]  # no jump, no duplicate
    assert sum("phase_switch" in r for r in log_b) == 1


def test_checkpoint_export_and_option_validation(tiny_supernet_data_dir, tiny_target_dir, tmp_path) -> None:
    from dream_s_edge.targets import load_target
    from runtime.errors import TrainingError

    options = SupernetOptions(phase1_steps=0, random_subnets=0, importance="weight",
                              interactions=("cross_attention", "concat"), draft_vocab_sizes=(None, 40),
                              visual_keep_ratios=(0.5, 1.0))
    train_draft(_config(tiny_supernet_data_dir, tiny_target_dir, tmp_path, options, ttt_steps=0, halt_after=2))
    log = read_log(tmp_path)
    assert log[0] == {"step": 0, "phase_switch": "weight"} and all(r["phase"] == 2 for r in log[1:])
    exported = draft_from_checkpoint(tmp_path)
    assert exported.name == "supernet-step2"
    adapter = load_target(tiny_target_dir)
    net = load_supernet(exported, adapter.text_embedding().weight, adapter.lm_head_weight())
    assert set(net.branches) == {"cross_attention", "concat"}
    assert json.loads((exported / "supernet.json").read_text())["training"]["step"] == 2
    with pytest.raises(TrainingError, match="concat"):
        train_draft(_config(tiny_supernet_data_dir, tiny_target_dir, tmp_path / "ttt", options))
    with pytest.raises(TrainingError, match="importance"):
        SupernetOptions(importance="random")


def test_missing_injection_layers_are_dropped_or_refused(tiny_data_dir, tiny_target_dir, tmp_path, caplog) -> None:
    """Data without hidden state 1: the space keeps layer 2 (with a warning); asking for layer 1 only fails."""
    from runtime.errors import TrainingError

    options = SupernetOptions(phase1_steps=0, random_subnets=0)
    out = train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path, options, steps=1, val_prompts=0, ttt_steps=0))
    assert trained_space(out).feature_layers == (2,)
    assert "not in the data" in caplog.text
    with pytest.raises(TrainingError, match="none of the candidate injection layers"):
        from search.supernet_train import training_space

        training_space(load_target_spec(tiny_target_dir), SupernetOptions(injection_layers=1), {1})


def load_target_spec(folder):
    from dream_s_edge.draft.spec import DraftSpec
    from dream_s_edge.runners.draft_factory import target_dims
    from dream_s_edge.targets import load_target

    return DraftSpec.from_name("dream-default", target_dims(load_target(folder)))


def test_cli_flags_reach_the_config(monkeypatch, tmp_path) -> None:
    from dream_s_edge import cli

    seen = {}

    def fake_train(config):
        seen["config"] = config
        return tmp_path

    monkeypatch.setattr("dream_s_edge.distill.train_draft", fake_train)
    code = cli.main(["train", "--data", "d", "--out", "o", "--supernet", "--phase1-steps", "7", "--layers", "1,3",
                     "--vocab-sizes", "full,64", "--interactions", "cross_attention,concat", "--importance", "weight"])
    options = seen["config"].supernet
    assert code == 0 and options.phase1_steps == 7 and options.num_layers == (1, 3)
    assert options.draft_vocab_sizes == (None, 64) and options.interactions == ("cross_attention", "concat")
    assert options.importance == "weight" and options.ffn_ratios == (0.5, 1.0)
    assert cli.main(["train", "--data", "d", "--out", "o", "--phase1-steps", "7"]) == cli.EXIT_USER_ERROR


def test_two_process_gloo_supernet_run(tiny_supernet_data_dir, tiny_target_dir, tmp_path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dream_s_edge.distill", "--data", str(tiny_supernet_data_dir), "--out", str(out),
           "--model", str(tiny_target_dir), "--steps", "4", "--save-every", "2", "--warmup", "1",
           "--val-prompts", "1", "--val-max-new-tokens", "4", "--device", "cpu", "--threads", "1",
           "--supernet", "--phase1-steps", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "supernet" / "supernet.json").read_text())["training"]
    assert record["world_size"] == 2
    digests = record["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both processes hold the same weights
    log = read_log(out)
    assert [r["phase"] for r in log if "loss" in r] == [1, 1, 2, 2]
