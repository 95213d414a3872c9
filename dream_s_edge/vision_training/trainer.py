"""`train_vision`: trains the target's vision tower and connector with the language model frozen.

Stage 1 (a slot head, no language model) makes the tower spell the scene out in word embeddings;
stages 2 and 3 (through the language model, frozen but for LoRA; loss on answer tokens plus the slot
loss) teach the language model to read it. Progress shows on a tqdm bar with the
loss and the latest validation score; checkpoints allow an exact resume after a kill.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from dream_s_edge.data import QUESTION_TYPES
from dream_s_edge.vision_training import batches
from dream_s_edge.vision_training.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_asset,
    write_model_card,
)
from dream_s_edge.vision_training.config import VisionTrainConfig
from dream_s_edge.vision_training.lora import attach_lora, load_lora_tensors, lora_tensors, split_lora
from dream_s_edge.vision_training.model import (
    VisionQA,
    load_target,
    load_trained,
    target_init_seed,
    trained_state,
    untrained_state,
)
from dream_s_edge.vision_training.probe import PROBE_LAYER, SlotHead
from dream_s_edge.vision_training.sequences import IGNORE, chat_layout

logger = logging.getLogger(__name__)

REPRODUCE_COMMAND = "dream-s-edge target train-vision"


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_at(local_step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak, within one stage."""
    if local_step < warmup:
        return peak * (local_step + 1) / warmup
    progress = (local_step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


class _Run:
    """The state of one training run: model, head, optimizer, step."""

    def __init__(self, config: VisionTrainConfig):
        self.config = config
        self.device = pick_device(config.device)
        model, self.processor, self.folder = load_target(config.model_dir, self.device)
        load_trained(model, untrained_state(model, target_init_seed(self.folder, config.init_seed)))
        self.layout = chat_layout(self.processor)
        self.vqa = VisionQA(model, self.layout.prefix, self.processor.image_token_id).to(self.device)
        self.image_size = model.config.vision_config.image_size
        self.visual_tokens = self.processor.image_seq_len
        torch.manual_seed(config.seed)
        self.lora = {}
        if config.lora_rank:
            self.lora = attach_lora(
                model.model.text_model,
                config.lora_rank,
                config.lora_alpha,
                "model.text_model.",
                config.lora_projections,
            )
            self.vqa.refresh_prefix = True
        embeddings = model.model.text_model.get_input_embeddings().weight
        vision = model.config.vision_config
        self.patch_grid = vision.image_size // vision.patch_size
        self.probe_layer = min(PROBE_LAYER, vision.num_hidden_layers)
        self.head = SlotHead(embeddings, self.processor.tokenizer, vision.hidden_size).to(self.device)
        self.step, self.stage, self.optimizer = 0, 0, None
        self.val = batches.val_batches(
            config.val_size,
            config.batch_size,
            self.layout,
            self.processor.tokenizer,
            self.image_size,
            self.visual_tokens,
        )
        self.ckpt_path = Path(config.out_dir) / "checkpoint.pt"

    def stage_of(self, step: int) -> int:
        return self.config.stage_of(step)

    def ensure_optimizer(self) -> None:
        """Creates the optimizer of the current step's stage (stage 2 drops the head)."""
        stage = self.stage_of(self.step)
        if stage == self.stage:
            return
        tower_scale = 1.0 if stage == 1 else self.config.tower_lr_scale
        self.vqa.model.model.vision_model.requires_grad_(tower_scale > 0)
        tower = [p for p in self.vqa.model.model.vision_model.parameters() if tower_scale > 0]
        groups = [
            {"params": list(self.vqa.model.model.connector.parameters())},
            {"params": tower, "lr_scale": tower_scale},
        ]
        if stage == 1:
            groups[0]["params"] += list(self.head.parameters())
        if stage >= 2 and self.lora:  # the adapters join in stage 2, at their own learning rate
            adapters = [p for a in self.lora.values() for p in (a.A, a.B)]
            groups.append({"params": adapters, "lr_scale": self.config.lora_lr_scale})
        groups = [g for g in groups if g["params"]]
        self.optimizer = torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0)
        self.stage = stage

    def state(self) -> dict:
        return {
            "step": self.step,
            "trained": {**trained_state(self.vqa.model), **lora_tensors(self.lora)},
            "head": self.head.state_dict(),
            "optimizer_stage": self.stage,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "rng": rng_state(),
            "config": asdict(self.config),
        }

    def restore(self, state: dict) -> None:
        self.step = state["step"]
        plain, lora = split_lora(state["trained"])
        load_trained(self.vqa.model, {k: v.to(self.device) for k, v in plain.items()})
        load_lora_tensors(self.lora, lora)
        self.head.load_state_dict(state["head"])
        self.ensure_optimizer()
        if state["optimizer"] is not None and state["optimizer_stage"] == self.stage:
            self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])

    def train_step(self) -> float:
        """One optimizer step at self.step; returns its loss."""
        cfg, indices = self.config, batches.train_indices(self.config, self.step)
        self.ensure_optimizer()
        if self.stage == 1:
            pixels, targets, patch_targets = batches.probe_batch(
                indices, self.image_size, self.visual_tokens, self.patch_grid
            )
            visual, patches = self.vqa.visual_tokens_and_patches(pixels.to(self.device), self.probe_layer)
            loss = self.head.loss(visual, targets.to(self.device))[0]
            loss = loss + self.head.patch_loss(patches, patch_targets.to(self.device))
            local, steps, peak = self.step, cfg.probe_steps, cfg.probe_lr
        else:  # stage 2: k questions and maybe a caption; stage 3: every answerable question, maybe a caption
            turns, caption = (
                (cfg.questions_per_image, cfg.caption_prob)
                if self.stage == 2
                else (len(QUESTION_TYPES), cfg.polish_caption_prob)
            )
            tokenizer = self.processor.tokenizer
            batch = batches.qa_batch(
                indices,
                self.layout,
                tokenizer,
                self.image_size,
                self.visual_tokens,
                turns,
                caption,
                cfg.position_turns,
            )
            loss = self.qa_loss(*(t.to(self.device) for t in batch))
            local = self.step - cfg.stage_start(self.stage)
            steps, peak = (cfg.lm_steps, cfg.lr) if self.stage == 2 else (cfg.polish_steps, cfg.polish_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(local, steps, peak, cfg.warmup) * group.get("lr_scale", 1.0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
        self.optimizer.step()
        self.step += 1
        return loss.item()

    def qa_loss(self, pixels, input_ids, labels, slots) -> torch.Tensor:
        """Answer-token cross-entropy, plus the stage-1 slot loss at `slot_weight` so that training
        through the language model does not pull the visual tokens away from word embeddings."""
        visual = self.vqa.visual_tokens(pixels)
        loss = self.vqa(pixels, input_ids, labels, visual=visual)[0]
        if self.config.slot_weight:
            loss = loss + self.config.slot_weight * self.head.loss(visual, slots)[0]
        return loss

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Slot accuracy of the visual tokens, and from stage 2 on the teacher-forced exact match."""
        slot_hits, correct, total = [], 0, 0
        for pixels, input_ids, labels, slots, _ in self.val:
            visual = self.vqa.visual_tokens(pixels.to(self.device))
            slot_hits.append(self.head.loss(visual, slots.to(self.device))[1])
            if self.stage_of(self.step - 1) == 1:
                continue
            _, logits, targets = self.vqa(
                pixels.to(self.device), input_ids.to(self.device), labels.to(self.device), visual=visual
            )
            rows = (labels != IGNORE).nonzero()[:, 0].to(self.device)
            wrong = torch.zeros(len(labels), device=self.device).index_add_(
                0, rows, (logits.argmax(-1) != targets).float()
            )
            correct += int((wrong == 0).sum())
            total += len(labels)
        scores = {"val_slot_acc": float(torch.stack(slot_hits).mean())}
        return scores | ({"val_exact_match": correct / total} if total else {})


def train_vision(config: VisionTrainConfig) -> Path:
    """Trains the vision tower and connector of a target, resuming from out_dir when possible.

    Args:
        config: the run; see VisionTrainConfig.

    Returns:
        The trained safetensors file; or, when stopped early by `config.stop_after`, the checkpoint.

    Raises:
        TrainingError: out_dir holds a checkpoint of a different schedule (and resume is on).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    run = _Run(config)
    state = load_checkpoint(run.ckpt_path, config) if config.resume else None
    if state is not None:
        run.restore(state)
        logger.info("Resuming %s at step %d", run.ckpt_path, run.step)
    log = Path(config.out_dir) / "log.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    stop = config.total_steps if config.stop_after is None else min(config.stop_after, config.total_steps)
    postfix: dict[str, float] = {}
    with tqdm(total=config.total_steps, initial=run.step, desc="train-vision", dynamic_ncols=True) as bar:
        while run.step < stop:
            postfix["loss"] = run.train_step()
            postfix["stage"] = run.stage
            if run.step % config.eval_every == 0 or run.step in (config.stage_start(3), config.total_steps):
                postfix.update(run.validate())
                with log.open("a") as f:
                    f.write(json.dumps({"step": run.step, **postfix}) + "\n")
            if run.step % config.checkpoint_every == 0 or run.step == stop:
                save_checkpoint(run.ckpt_path, run.state())
            bar.set_postfix({k: round(v, 4) for k, v in postfix.items()})
            bar.update(1)
    if run.step < config.total_steps:
        return run.ckpt_path
    return _export(run)


def _export(run: _Run) -> Path:
    """Writes the trained tensors (and, for the package asset, the model card)."""
    from dream_s_edge.embedded.build import VISION_ASSET

    config, tensors = run.config, {**trained_state(run.vqa.model), **lora_tensors(run.lora)}
    ship = config.asset_path is None and config.model_dir is None
    path = VISION_ASSET if ship else Path(config.asset_path or Path(config.out_dir) / "vision.safetensors")
    write_asset(path, tensors, config)
    if ship:
        vc = run.vqa.model.config.vision_config
        tower = f"{vc.num_hidden_layers} layers, hidden {vc.hidden_size}, {vc.image_size} px, patch {vc.patch_size}"
        write_model_card(path.parent / "MODEL_CARD.md", config, tensors, tower, REPRODUCE_COMMAND)
    logger.info("Wrote %d trained tensors to %s", len(tensors), path)
    return path
