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


def test_training_changes_only_vision_tensors_and_adapters(tiny_target, tmp_path):
    path = train_vision(replace(_config(tiny_target, tmp_path), probe_steps=1, lm_steps=1))
    names = load_file(str(path)).keys()
    assert any(n.startswith("model.vision_model.") for n in names)
    assert any(n.startswith("lora.model.text_model.layers.0.self_attn.q_proj") for n in names)
    assert all(n.startswith(("model.vision_model.", "model.connector.", "lora.")) for n in names)
    frozen = replace(_config(tiny_target, tmp_path / "frozen"), probe_steps=1, lm_steps=1, lora_rank=0)
    assert all(not n.startswith("lora.") for n in load_file(str(train_vision(frozen))))


def test_shipped_tensors_reproduce_the_trained_model(tiny_target, tmp_path):
    """The asset merged into a fresh base model (what the default target's build does) scores answers
    exactly as the training-time form (adapters beside frozen weights) does."""
    from dream_s_edge.vision_training.batches import val_batches
    from dream_s_edge.vision_training.lora import attach_lora, load_lora_tensors, split_lora
    from dream_s_edge.vision_training.model import VisionQA, load_target, load_trained
    from dream_s_edge.vision_training.sequences import chat_layout

    cfg = replace(_config(tiny_target, tmp_path), probe_steps=1, lm_steps=2, lr=1e-2)
    tensors = load_file(str(train_vision(cfg)))

    def loss(merge: bool | None) -> torch.Tensor:
        model, processor, _ = load_target(str(tiny_target), torch.device("cpu"))
        layout = chat_layout(processor)
        if merge:
            load_trained(model, tensors)
        elif merge is False:
            plain, lora = split_lora(tensors)
            load_trained(model, plain)
            load_lora_tensors(
                attach_lora(
                    model.model.text_model,
                    cfg.lora_rank,
                    cfg.lora_alpha,
                    "model.text_model.",
                    cfg.lora_projections,
                ),
                lora,
            )
        batch = val_batches(2, 2, layout, processor.tokenizer, 64, processor.image_seq_len)[0]
        with torch.no_grad():
            return VisionQA(model, layout.prefix, processor.image_token_id)(*batch[:3])[0]

    merged, adapters, base = loss(True), loss(False), loss(None)
    assert torch.allclose(merged, adapters, atol=1e-5), (merged, adapters)
    assert not torch.allclose(merged, base, atol=1e-3)


def test_finished_run_extends_with_stage_3_exactly(tiny_target, tmp_path):
    """A run finished without stage 3, then resumed with polish steps, ends bit-identical to a fresh run
    of the longer schedule."""
    longer = replace(_config(tiny_target, tmp_path / "a"), polish_steps=2)
    fresh = load_file(str(train_vision(longer)))
    short = replace(_config(tiny_target, tmp_path / "b"), polish_steps=0)
    train_vision(short)
    extended = load_file(str(train_vision(replace(short, polish_steps=2))))
    assert fresh.keys() == extended.keys() and all(torch.equal(fresh[k], extended[k]) for k in fresh)
    assert train_indices(longer, 5)[0] != train_indices(longer, 4)[0]  # stage 3 reads its own images
    with pytest.raises(TrainingError):  # once stage 3 has begun, its settings are part of the schedule
        train_vision(replace(short, polish_steps=1, stop_after=6, resume=True, polish_lr=1e-3))


def test_resume_refuses_another_schedule(tiny_target, tmp_path):
    cfg = _config(tiny_target, tmp_path)
    train_vision(replace(cfg, stop_after=1))
    with pytest.raises(TrainingError):
        train_vision(replace(cfg, batch_size=3))


def test_answer_loss_keeps_the_slot_loss(tiny_target, tmp_path):
    from dream_s_edge.vision_training import batches
    from dream_s_edge.vision_training.trainer import _Run

    run = _Run(_config(tiny_target, tmp_path))
    batch = batches.qa_batch(
        train_indices(run.config, 2),
        run.layout,
        run.processor.tokenizer,
        run.image_size,
        run.visual_tokens,
        2,
    )
    with torch.no_grad():
        anchored = run.qa_loss(*batch)
        slot = run.head.loss(run.vqa.visual_tokens(batch[0]), batch[3])[0]
        run.config = replace(run.config, slot_weight=0.0)
        plain = run.qa_loss(*batch)
    assert slot > 0 and torch.allclose(anchored - plain, slot)


def test_tower_is_frozen_after_stage_1_unless_scaled(tiny_target, tmp_path):
    """With tower_lr_scale 0 stages 2 and 3 train the connector and adapters only; with > 0 the tower too."""
    base = replace(_config(tiny_target, tmp_path / "probe"), lm_steps=0, polish_steps=0, lr=1e-2)
    probe_only = load_file(str(train_vision(base)))
    for scale, moves in ((0.0, False), (1.0, True)):
        run = load_file(str(train_vision(replace(base, out_dir=str(tmp_path / str(scale)), lm_steps=2,
                                                 tower_lr_scale=scale))))  # fmt: skip
        tower = [k for k in probe_only if k.startswith("model.vision_model.")]
        assert any(not torch.equal(run[k], probe_only[k]) for k in tower) == moves, scale
        connector = [k for k in probe_only if k.startswith("model.connector.")]
        assert any(not torch.equal(run[k], probe_only[k]) for k in connector)
