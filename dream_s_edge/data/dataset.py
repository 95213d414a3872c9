"""The scene-QA data set: splits, seeds, and the samples that training and evaluation read.

Sample `i` of a split is a pure function of `(split, i)`: its generator is seeded with
`SPLIT_OFFSETS[split] + i`, and the offsets are `SPLIT_STRIDE` apart, so the train, validation and test
splits never share a seed (and so never share a scene) as long as `i < SPLIT_STRIDE`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from dream_s_edge.data.questions import QA, QUESTION_TYPES, all_questions, ask, caption, describe
from dream_s_edge.data.scenes import Scene, render_scene, sample_scene

SPLIT_STRIDE = 1_000_000_000
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": SPLIT_STRIDE, "test": 2 * SPLIT_STRIDE}


@dataclass(frozen=True)
class SceneSample:
    """One image with its scene data, questions, caption and description."""

    seed: int  # the generator seed of this sample; unique across splits
    scene: Scene
    image: Image.Image  # RGB, scene.image_size square
    questions: tuple[QA, ...]  # every answerable type for "train"; one chosen type for "val"/"test"
    caption: str
    description: str


def sample_seed(split: str, index: int) -> int:
    """The generator seed of sample `index` of `split`."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_OFFSETS)}")
    if not 0 <= index < SPLIT_STRIDE:
        raise ValueError(f"sample index {index} is outside [0, {SPLIT_STRIDE})")
    return SPLIT_OFFSETS[split] + index


def make_sample(split: str, index: int, image_size: int = 256, qtype: str | None = None) -> SceneSample:
    """Builds sample `index` of `split`.

    Args:
        split: "train", "val" or "test".
        index: position in the split; any value in [0, SPLIT_STRIDE).
        image_size: side of the rendered square image, pixels.
        qtype: ask only this question type; the scene is re-drawn (from the same generator) until it
            can be asked. None asks every type the scene can answer.
    """
    seed = sample_seed(split, index)
    rng = np.random.default_rng(seed)
    while True:
        # Word questions need a written word: raise the chance rather than loop many times.
        scene = sample_scene(rng, image_size, word_prob=0.9 if qtype == "word" else 0.4)
        questions = all_questions(scene, rng) if qtype is None else [ask(scene, qtype, rng)]
        if questions and questions[0] is not None:
            break
    return SceneSample(seed, scene, render_scene(scene), tuple(questions), caption(scene), describe(scene))


def eval_sample(split: str, index: int, image_size: int = 256) -> SceneSample:
    """Sample `index` of a held-out split with one question, its type cycling through QUESTION_TYPES,
    so that any `n * len(QUESTION_TYPES)` consecutive samples hold `n` questions of each type."""
    return make_sample(split, index, image_size, qtype=QUESTION_TYPES[index % len(QUESTION_TYPES)])
