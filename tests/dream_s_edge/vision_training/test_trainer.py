"""Training resumes after a kill at the same step, with the same next batch and bit-identical weights."""

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from dream_s_edge.vision_training import VisionTrainConfig, train_vision
from dream_s_edge.vision_training.batches import train_indices
from dream_s_edge.vision_training.checkpoint import load_checkpoint
from runtime.errors import TrainingError


def _config(tiny_target, out):
    return VisionTrainConfig(
        out_dir=str(out), model_dir=str(tiny_target), probe_steps=2, probe_batch=4, lm_steps=3, batch_size=2,
        questions_per_image=2, warmup=1, val_size=4, eval_every=2, checkpoint_every=100, device="cpu", threads=1,
    )  # fmt: skip


def test_resume_after_kill_is_bit_identical(tiny_target, tmp_path):
    straight = train_vision(_config(tiny_target, tmp_path / "a"))
    cfg = _config(tiny_target, tmp_path / "b")
    ckpt = train_vision(replace(cfg, stop_after=3))  # the "kill": mid stage 2
    state = load_checkpoint(ckpt, cfg)
    assert state["step"] == 3
    assert train_indices(cfg, state["step"]) == train_indices(_config(tiny_target, tmp_path / "a"), 3)
    resumed = train_vision(cfg)
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_changes_only_vision_tensors(tiny_target, tmp_path):
    path = train_vision(replace(_config(tiny_target, tmp_path), probe_steps=1, lm_steps=1))
    names = load_file(str(path)).keys()
    assert names and all(n.startswith(("model.vision_model.", "model.connector.")) for n in names)


def test_resume_refuses_another_schedule(tiny_target, tmp_path):
    cfg = _config(tiny_target, tmp_path)
    train_vision(replace(cfg, stop_after=1))
    with pytest.raises(TrainingError):
        train_vision(replace(cfg, batch_size=3))
