"""Training checkpoints (exact resume) and the shipped artifacts (trained tensors and model card).

A checkpoint holds everything the next step depends on: the global step, the trained tensors, the
slot head, the optimizer of the current stage and the torch RNG states. Data order is a function
of (seed, step) alone, so restoring the step restores the next batch. Writes go to a temporary file
that replaces the old one atomically, so a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from runtime.errors import TrainingError

# Fields that change what a step computes: a checkpoint only resumes a run that agrees on them.
SCHEDULE_FIELDS = ("seed", "probe_steps", "probe_batch", "lm_steps", "batch_size", "questions_per_image",
                   "caption_prob", "lora_rank", "lora_projections", "position_turns", "slot_weight",
                   "tower_lr_scale")  # fmt: skip
# Fields of the last stage only: a checkpoint taken before that stage began resumes under any value
# (its steps so far are exactly those of a fresh run of the new schedule), which extends a finished run.
LAST_STAGE_FIELDS = ("polish_steps", "polish_lr", "polish_caption_prob")


def save_checkpoint(path: Path, state: dict) -> None:
    """Writes `state` (tensors and plain values) to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, config) -> dict | None:
    """The checkpoint at `path`, or None when there is none.

    Raises:
        TrainingError: the checkpoint belongs to a run with a different schedule.
    """
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state["config"]
    fields = SCHEDULE_FIELDS + (LAST_STAGE_FIELDS if state["step"] > config.stage_start(3) else ())
    changed = [f for f in fields if saved.get(f, 0) != getattr(config, f)]
    if changed:
        raise TrainingError(
            f"The checkpoint {path} belongs to a different training schedule.",
            note=", ".join(f"{f}: {saved.get(f)} there, {getattr(config, f)} now" for f in changed),
            hint="use another out_dir, pass the same settings, or set resume=False to start over",
        )
    return state


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_asset(path: Path, tensors: dict[str, torch.Tensor], config) -> None:
    """Writes the trained tensors as safetensors, with the training config as metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: str(v) for k, v in asdict(config).items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


MODEL_CARD = """# Model card: the embedded default target's vision tower

`default_vision.safetensors` holds the vision tower (SigLIP-style, {tower}) and the pixel-shuffle
connector of the embedded default target, whose language model is SmolLM2-135M-Instruct, plus rank-
{lora_rank} LoRA adapters on the language model's attention projections ({projections}; `lora.*` tensors; the
default target's build merges them into the dense weights once). {n_tensors} tensors,
{n_params:,} parameters.

## Training

- Data: procedural scene QA (`dream_s_edge/data/`): shapes, colours, sizes, grid positions, a written
  word, plain / noisy / textured backgrounds. Questions: {qtypes}. Train, validation and test splits
  are disjoint by seed.
- Stage 1 ({probe_steps} steps, batch {probe_batch}): tower and connector only, no language model.
  Every visual token learns to be the language model's input embedding of one word about its part of
  the image: in each cell's block of tokens, the row through the cell's centre spells its object
  (" red", " star" or " none", or the written word), the row below its place (" top", " left"), other
  rows the object count. Mean squared error to the word's embedding plus a cosine classification
  among the slot words, and an auxiliary per-patch colour / shape / word classifier.
- Stage 2 ({lm_steps} steps, batch {batch_size} images x {qpi} questions, a caption turn for
  {caption_pct}% of the images): through the language model (frozen but for the LoRA adapters),
  cross-entropy on the answer tokens and their closing `<|im_end|>`, plus the stage-1 slot loss at
  weight {slot_weight} so the visual tokens stay word embeddings. {tower_stage2} Up to
  {position_turns} more "Where is the ...?" turns per image about its other objects; the caption turn
  comes first for half the images that have one, elsewhere among the turns for the rest.
- Stage 3 ({polish_steps} steps, same batch): every answerable question of each image, the same extra
  position turns, a caption turn for {polish_caption_pct}% of them, peak learning rate {polish_lr}.
- Seed {seed}. The untrained tower it starts from is the embedded build's seeded initialisation.

## Reproduce

```
{command}
```

Evaluate (exact match per question type on the test split, against the untrained tower):

```
dream-s-edge target eval
```

## Limits

The tower has only seen synthetic scenes: on photographs the language model still answers fluently,
but no accuracy is claimed for them, and an open question about a photograph tends to get a
description in the scenes' style ("Six shapes on a textured background: a medium red square, ...").
The LoRA adapters change the language model slightly, so the default target's text-only answers are
close to, not identical with, SmolLM2-135M-Instruct's.
"""


def write_model_card(path: Path, config, tensors: dict[str, torch.Tensor], tower: str, command: str) -> None:
    """Writes MODEL_CARD.md next to the shipped tensors."""
    from dream_s_edge.data import QUESTION_TYPES

    text = MODEL_CARD.format(
        tower=tower,
        n_tensors=len(tensors),
        n_params=sum(t.numel() for t in tensors.values()),
        qtypes=", ".join(QUESTION_TYPES),
        qpi=config.questions_per_image,
        lora_rank=config.lora_rank,
        projections="/".join(config.lora_projections),
        position_turns=config.position_turns,
        polish_steps=config.polish_steps,
        polish_lr=config.polish_lr,
        polish_caption_pct=round(100 * config.polish_caption_prob),
        caption_pct=round(100 * config.caption_prob),
        slot_weight=config.slot_weight,
        tower_stage2=(
            f"The tower trains at {config.tower_lr_scale} x the learning rate."
            if config.tower_lr_scale
            else "The tower stays as stage 1 left it; the connector and the adapters train."
        ),
        command=command,
        **{k: getattr(config, k) for k in ("probe_steps", "probe_batch", "lm_steps", "batch_size", "seed")},
    )
    path.write_text(text)
