"""The trainer on a tiny target: a run killed between checkpoints and resumed ends with the same
step count, the same weights and the same loss curve as an uninterrupted run."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from dream_s_edge.distill import TrainConfig, draft_from_checkpoint, train_draft
from dream_s_edge.distill.train_state import read_log
from runtime.errors import TrainingError


def _config(data, target, out, **overrides) -> TrainConfig:
    values = dict(data_dir=str(data), out_dir=str(out), model=str(target), steps=6, save_every=2, warmup=2,
                  ttt_steps=1, feature_noise=0.05, val_prompts=1, val_max_new_tokens=6)
    return TrainConfig(**{**values, **overrides})


def test_resume_after_kill_matches_an_uninterrupted_run(tiny_data_dir, tiny_target_dir, tmp_path):
    whole = train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path / "whole"))
    killed = _config(tiny_data_dir, tiny_target_dir, tmp_path / "killed", halt_after=3)
    train_draft(killed)  # "killed" after step 3; its last checkpoint is step 2
    assert [r["step"] for r in read_log(tmp_path / "killed")] == [1, 2, 3]
    resumed = train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path / "killed"))
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    log_a, log_b = read_log(tmp_path / "whole"), read_log(tmp_path / "killed")
    assert [r["step"] for r in log_b if r.get("resumed")] == [2]  # the resume is marked where it happened
    log_b = [r for r in log_b if not r.get("resumed")]
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a] == [1, 2, 3, 4, 5, 6, 6]
    assert [r.get("loss") for r in log_a] == [r.get("loss") for r in log_b]  # no jump, no duplicate
    record = json.loads((resumed / "config.json").read_text())["distillation"]
    assert record["layer_selection"]["band"] == [1, 1] and record["world_size"] == 1
    assert record["validation"]["passes"] > 0 and record["validation"]["tau"] >= 1.0
    assert (tmp_path / "killed" / "train_log.png").is_file()


def test_export_and_refusal_of_another_config(tiny_data_dir, tiny_target_dir, tmp_path):
    train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path, halt_after=2, steps=4))
    exported = draft_from_checkpoint(tmp_path)  # a stopped run's draft, usable as --draft
    assert exported.name == "draft-step2" and (exported / "model.safetensors").is_file()
    assert json.loads((exported / "config.json").read_text())["distillation"]["step"] == 2
    with pytest.raises(TrainingError, match="another training configuration"):
        train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path, steps=4, lr=1e-3))



def test_reduced_vocabulary_keeps_the_most_frequent_answer_tokens(tiny_data_dir, tiny_target_dir, tmp_path):
    import torch

    from dream_s_edge.distill.dataset import DistillDataset, answer_token_counts
    from dream_s_edge.draft import load_draft

    folder = train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path, steps=2, ttt_steps=0, draft_vocab_size=40))
    spec = json.loads((folder / "config.json").read_text())["draft_spec"]
    vocab, width = spec["target_vocab_size"], spec["target_hidden_size"]
    d2t = load_file(str(folder / "model.safetensors"))["d2t"]
    assert spec["draft_vocab_size"] == 40 and d2t.numel() == 40 and bool((d2t[1:] > d2t[:-1]).all())
    counts = answer_token_counts(DistillDataset(tiny_data_dir), vocab)
    dropped = torch.ones(vocab, dtype=torch.bool)
    dropped[d2t] = False
    assert counts[d2t].min() >= counts[dropped].max() and counts[d2t].sum() > 0  # the most frequent are kept
    table = torch.zeros(vocab, width)
    assert torch.equal(load_draft(folder, table, table).d2t, d2t)  # and the folder loads as a draft
    from dream_s_edge.draft.vocab_prune import load_token_counts

    assert (load_token_counts(folder, vocab) == counts.numpy()).all()  # the counts that rank --draft-vocab


def test_ablation_overrides_reach_the_draft_and_its_targets(tiny_data_dir, tiny_target_dir, tmp_path):
    import torch

    from dream_s_edge.distill.dataset import DistillDataset, training_example
    from dream_s_edge.draft import DraftSpec

    folder = train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path, steps=1, ttt_steps=0,
                                 interaction="concat", intermed_source="last"))
    saved = json.loads((folder / "config.json").read_text())
    assert saved["draft_spec"]["interaction"] == "concat"
    assert saved["distillation"]["train_config"]["intermed_source"] == "last"
    seq = DistillDataset(tiny_data_dir)[0]
    spec = DraftSpec.from_dict(saved["draft_spec"])
    last = training_example(seq, spec, "cpu", intermed_source="last")
    entropy = training_example(seq, spec, "cpu")
    assert torch.equal(last.intermed, last.last)
    assert torch.equal(entropy.intermed, seq["intermed"][entropy.positions].float())
    assert not torch.equal(entropy.intermed, entropy.last)  # the tiny target's band layer is not its last
    with pytest.raises(TrainingError, match="intermediate-feature source"):
        _config(tiny_data_dir, tiny_target_dir, tmp_path, intermed_source="middle")


def test_feature_layer_override_reaches_the_draft(tiny_supernet_data_dir, tiny_data_dir, tiny_target_dir, tmp_path):
    """--feature-layers 1,2: the draft reads the tiny target's layer 1 and its last layer, fused."""
    config = _config(tiny_supernet_data_dir, tiny_target_dir, tmp_path / "fused", steps=1, ttt_steps=0,
                     feature_layers=(1, 2))
    folder = train_draft(config)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["draft_spec"]["feature_layers"] == [1, 2]
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # a resume matches
    with pytest.raises(TrainingError, match="no hidden state of target layer 1"):
        train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path / "missing", steps=1, ttt_steps=0,
                            feature_layers=(1, 2)))


def test_warm_start_begins_from_the_given_draft_and_refuses_another(tiny_data_dir, tiny_target_dir, tmp_path):
    """--init-from: step 0 of the new run holds the trained draft's weights (a zero learning rate keeps
    them), the run records where it started, and a draft of another architecture is refused."""
    first = train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path / "first", steps=2, ttt_steps=0))
    kept = train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path / "warm", steps=1, ttt_steps=0, lr=0.0,
                               init_from=str(first)))
    a, b = load_file(str(first / "model.safetensors")), load_file(str(kept / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)
    record = json.loads((kept / "config.json").read_text())["distillation"]
    assert record["train_config"]["init_from"] == str(first)
    fresh = train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path / "fresh", steps=1, ttt_steps=0, lr=0.0))
    c = load_file(str(fresh / "model.safetensors"))
    assert not all(torch_equal(a[k], c[k]) for k in a)  # without it, step 0 is the seeded initialisation
    with pytest.raises(TrainingError, match="another architecture"):
        train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path / "other", steps=1, ttt_steps=0,
                            preset="eagle", init_from=str(first)))


def test_warm_start_keeps_its_own_vocabulary_on_other_data(tiny_data_dir, tiny_target_dir, tmp_path):
    """--init-from a draft whose vocabulary map the run's data would not give (as after distilling with
    another --seed): the run keeps that map and adds the draft's token counts to the data's."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from dream_s_edge.draft.vocab_prune import save_token_counts

    first = train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path / "first", steps=1, ttt_steps=0,
                                draft_vocab_size=40))
    state = load_file(str(first / "model.safetensors"))
    own = torch.arange(1, 81, 2, dtype=state["d2t"].dtype)  # 40 tokens, not the data's most frequent
    assert not torch.equal(own, state["d2t"])
    save_file({**state, "d2t": own}, str(first / "model.safetensors"))
    counts = np.load(first / "token_counts.npy")
    save_token_counts(first, np.arange(counts.size))
    warm = train_draft(_config(tiny_data_dir, tiny_target_dir, tmp_path / "warm", steps=1, ttt_steps=0, lr=0.0,
                               draft_vocab_size=40, init_from=str(first)))
    kept = load_file(str(warm / "model.safetensors"))
    assert torch.equal(kept["d2t"], own) and all(torch_equal(kept[k], state[k]) for k in state if k != "d2t")
    assert (np.load(warm / "token_counts.npy") == counts + np.arange(counts.size)).all()


def torch_equal(x, y) -> bool:
    return bool((x == y).all())
