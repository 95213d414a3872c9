"""Training and validation batches, each a pure function of (config, step).

Stage 1 step `s` reads train samples `base(1) + s * probe_batch + j`, stage 2 step `s` reads
`base(2) + (s - probe_steps) * batch_size + j`, where the bases depend on the seed only. So a resumed
run reads exactly the batches an uninterrupted run would, with no sampler state to save.
"""

from __future__ import annotations

import numpy as np
import torch

from dream_s_edge.data import QUESTION_TYPES, eval_sample, make_sample
from dream_s_edge.data.dataset import SPLIT_STRIDE
from dream_s_edge.data.questions import ask_each
from dream_s_edge.vision_training.probe import patch_targets, scene_targets
from dream_s_edge.vision_training.sequences import ChatLayout, collate, encode_turns, pixel_values

# Stages never re-read another stage's images (for any sane run).
_STAGE_BASE = {1: 0, 2: SPLIT_STRIDE // 2, 3: SPLIT_STRIDE // 4 * 3}


def train_indices(config, step: int) -> list[int]:
    """Train-split sample indices read at global `step`."""
    stage = config.stage_of(step)
    size = config.probe_batch if stage == 1 else config.batch_size
    local = step - config.stage_start(stage)
    base = _STAGE_BASE[stage] + config.seed * 10_000_019
    return [(base + local * size + j) % SPLIT_STRIDE for j in range(size)]


def probe_batch(indices: list[int], image_size: int, visual_tokens: int, patch_grid: int):
    """Stage 1 batch: pixels [B, 3, H, W], slot targets [B, Tv, 2] (probe.scene_targets) and patch
    targets [B, patch_grid ** 2, 3] (probe.patch_targets)."""
    samples = [make_sample("train", i, image_size) for i in indices]
    return (
        pixel_values([s.image for s in samples], image_size),
        torch.stack([scene_targets(s.scene, visual_tokens) for s in samples]),
        torch.stack([patch_targets(s.scene, patch_grid) for s in samples]),
    )


# Open questions whose answer is the caption: so open questions about photographs get a sentence too.
CAPTION_QUESTIONS = (
    "Describe the image in one sentence.",
    "What is in this image?",
    "What do you see in the picture?",
)


def pick_turns(sample, k: int, caption_prob: float = 0.0, positions: int = 0) -> list[tuple[str, str]]:
    """The QA turns of one training image, all seeded by the sample:
    - up to `k` of the sample's questions in a seeded order, the word question first when there is one
      (it is the rarest and hardest type);
    - up to `positions` more position questions about objects those did not ask where;
    - for a `caption_prob` share of the images, a turn asking for the caption (dense supervision: every
      object's size, colour and shape, and the count), first for half of them (at inference an open
      question is the first turn), else at a random place among the others."""
    rng = np.random.default_rng(sample.seed)
    order = rng.permutation(len(sample.questions))
    qas = sorted((sample.questions[i] for i in order), key=lambda qa: qa.qtype != "word")[:k]
    turns = [(qa.question, qa.answer) for qa in qas + _more_positions(sample, qas, positions, rng)]
    if rng.random() < caption_prob:
        at = 0 if rng.random() < 0.5 else int(rng.integers(1, len(turns) + 1))
        turns.insert(at, (CAPTION_QUESTIONS[int(rng.integers(len(CAPTION_QUESTIONS)))], sample.caption))
    return turns


def _more_positions(sample, asked: list, n: int, rng: np.random.Generator) -> list:
    """Up to `n` position questions (QA) about objects whose place `asked` does not give already."""
    if n == 0:
        return []
    known = {qa.answer for qa in asked if qa.qtype == "position"}
    fresh = [qa for qa in ask_each(sample.scene, "position", rng) if qa.answer not in known]
    return [fresh[i] for i in rng.permutation(len(fresh))[:n]]


def qa_batch(
    indices: list[int],
    layout: ChatLayout,
    tokenizer,
    image_size: int,
    visual_tokens: int,
    k: int,
    caption_prob: float = 0.0,
    positions: int = 0,
):
    """Stage 2 and 3 batch: pixels [B, 3, H, W], input_ids [B, T] and labels [B, T] with k turns per
    image, and the stage-1 slot targets [B, Tv, 2] that keep the visual tokens words."""
    samples = [make_sample("train", i, image_size) for i in indices]
    rows = [encode_turns(layout, tokenizer, pick_turns(s, k, caption_prob, positions)) for s in samples]
    slots = torch.stack([scene_targets(s.scene, visual_tokens) for s in samples])
    return (pixel_values([s.image for s in samples], image_size), *collate(rows, layout.pad), slots)


def val_batches(
    size: int, batch: int, layout: ChatLayout, tokenizer, image_size: int, visual_tokens: int
) -> list[tuple]:
    """The fixed validation set: `size` one-question samples, types cycling through QUESTION_TYPES.

    Each batch is (pixels, input_ids, labels, scene targets, question types).
    """
    out = []
    for start in range(0, size, batch):
        samples = [eval_sample("val", i, image_size) for i in range(start, min(size, start + batch))]
        rows = [
            encode_turns(layout, tokenizer, [(s.questions[0].question, s.questions[0].answer)])
            for s in samples
        ]
        pixels = pixel_values([s.image for s in samples], image_size)
        targets = torch.stack([scene_targets(s.scene, visual_tokens) for s in samples])
        out.append((pixels, *collate(rows, layout.pad), targets, [s.questions[0].qtype for s in samples]))
    return out


assert len(QUESTION_TYPES) == 5
