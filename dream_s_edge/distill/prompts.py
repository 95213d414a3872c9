"""Prompt sources of self-distillation: procedural scenes, real photographs and text instructions.

A prompt is data (`PromptSpec`: source, an id inside the source, the question), so the distillation
manifest can list every prompt it used and rebuild any held-out image later (validation τ, bench
files). `materialize(spec)` turns a spec into (PIL image or None, question).

Sources:
  * "scene": the scene-QA data set (`dream_s_edge.data.dataset`): training prompts from its "train"
    split with its own questions or open ones, held-out prompts from its "test" split. Without that
    package, seeded PIL drawings with open questions.
  * "photo": the real photographs scikit-image ships, with open questions. Two photographs are kept
    out of training and used only for held-out prompts.
  * "text": the package's own list of varied text-only instructions (`assets/distill_instructions.txt`).

Data flow: `training_prompts(config)` / `heldout_prompts(config)` -> `PromptSpec`s ->
`distill/data.py` runs each through the target.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from runtime.errors import UserInputError

logger = logging.getLogger(__name__)

INSTRUCTIONS_FILE = Path(__file__).resolve().parent.parent / "assets" / "distill_instructions.txt"

# Photographs scikit-image ships (skimage/data), grayscale ones converted to RGB.
TRAIN_PHOTOS = ("astronaut.png", "coffee.png", "motorcycle_left.png", "camera.png", "coins.png",
                "page.png", "grass.png", "gravel.png", "brick.png", "hubble_deep_field.jpg",
                "retina.jpg", "ihc.png", "color.png", "logo.png", "moon.png", "text.png")
HELDOUT_PHOTOS = ("chelsea.png", "rocket.jpg")

SCENE_QUESTIONS = (
    "What shapes do you see in this image?",
    "Describe this image.",
    "What colours appear in this picture?",
    "How many objects are in the image?",
    "Describe the objects and where they are.",
    "Is there any text in this image? What does it say?",
    "What is the largest object in the picture?",
    "Describe the background of this image.",
)
PHOTO_QUESTIONS = (
    "Describe this image.",
    "What is in this picture?",
    "What do you see in this photograph?",
    "Describe the colours and the mood of this photo.",
    "What is the main subject of this image?",
    "Write a caption for this photo.",
    "What might have happened just before this picture was taken?",
    "Describe this image in detail.",
)

# Test-split index of the first open-question scene of `mixed_heldout_prompts` (far above its QA scenes).
MIXED_OPEN_OFFSET = 100_000
# Scene indices: training prompts draw from [0, HELDOUT_SEED_BASE); plain-seed held-out scenes lie above.
HELDOUT_SEED_BASE = 1_000_000
# The seed of `calibration_prompts` (distill-data runs use small seeds: 0, 1, ...).
CALIBRATION_SEED = 7_000


@dataclass(frozen=True)
class PromptSpec:
    """One prompt, as data.

    Attributes:
        source: "scene", "photo" or "text".
        key: the item inside the source: scene seed, photograph file name, or instruction index.
        question: the question or instruction asked.
    """

    source: str
    key: str
    question: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptSpec:
        return cls(source=str(data["source"]), key=str(data["key"]), question=str(data["question"]))


@lru_cache(maxsize=1)
def instructions() -> tuple[str, ...]:
    """The package's text-only instructions (comment lines and blanks skipped)."""
    lines = INSTRUCTIONS_FILE.read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def training_prompts(num_scene: int, num_photo: int, num_text: int, seed: int) -> list[PromptSpec]:
    """The training prompt mix, deterministic in `seed`, interleaved across sources."""
    rng = np.random.default_rng(seed)
    scenes = [_scene_spec("train", int(s), rng) for s in rng.choice(HELDOUT_SEED_BASE, num_scene, replace=False)]
    photos = [PromptSpec("photo", TRAIN_PHOTOS[i % len(TRAIN_PHOTOS)],
                         PHOTO_QUESTIONS[int(rng.integers(len(PHOTO_QUESTIONS)))]) for i in range(num_photo)]
    texts = instructions()
    order = rng.permutation(len(texts))[:num_text]
    text = [PromptSpec("text", str(int(i)), texts[int(i)]) for i in order]
    return _interleave([scenes, photos, text])


def calibration_prompts(count: int, seed: int = CALIBRATION_SEED) -> list[PromptSpec]:
    """`count` prompts of the training mix's kinds for `dream-s-edge calibrate`: five eighths scenes
    (train split, own or open questions), two eighths training photographs, one eighth text.

    The seed is its own, so the scenes are not the distillation prompts of seeds 0, 1, ... (the
    photographs and instructions come from the same pools); none is a held-out bench prompt (test
    split, held-out photographs).
    """
    photos, texts = count * 2 // 8, count // 8
    return training_prompts(count - photos - texts, photos, texts, seed)[:count]


def heldout_prompts(num_scene: int, num_photo: int, seed: int, num_open_scene: int = 0,
                    open_offset: int | None = None) -> list[PromptSpec]:
    """Held-out prompts: scenes with unseen seeds and photographs never used in training.

    Args:
        num_scene: test-split scenes, each with one of its own (short-answer) questions.
        num_photo: held-out photographs (chelsea, rocket in turn), the open questions in turn.
        seed: the prompt seed (the training prompts' seed; held-out ones never overlap them).
        num_open_scene: further test-split scenes (after the first `num_scene`) asked open questions
            ("Describe this image."), whose answers are sentences. They leave the others unchanged.
        open_offset: the first open scene's test-split index (None: `num_scene`, right after the QA scenes).
    """
    rng = np.random.default_rng(seed + 1)
    scenes = [_scene_spec("test", i, rng) for i in range(num_scene)]
    photos = [PromptSpec("photo", HELDOUT_PHOTOS[i % len(HELDOUT_PHOTOS)], PHOTO_QUESTIONS[i % len(PHOTO_QUESTIONS)])
              for i in range(num_photo)]
    open_rng = np.random.default_rng(seed + 2)
    first = num_scene if open_offset is None else open_offset
    open_scenes = [_open_scene_spec(first + i, open_rng) for i in range(num_open_scene)]
    return _interleave([scenes, photos, open_scenes])


def mixed_heldout_prompts(count: int, seed: int) -> list[PromptSpec]:
    """`count` held-out prompts taken in turn from the three held-out kinds: test-split scene QA
    (short answers), held-out photographs and test-split scenes with open questions (sentences).
    A prefix of a longer list is the shorter list, so slices of one call are disjoint prompt sets."""
    return heldout_prompts(count, count, seed, num_open_scene=count, open_offset=MIXED_OPEN_OFFSET)[:count]


def _open_scene_spec(index: int, rng: np.random.Generator) -> PromptSpec:
    """Test-split scene `index` with an open question."""
    question = SCENE_QUESTIONS[int(rng.integers(len(SCENE_QUESTIONS)))]
    key = f"test:{index}" if _has_scene_qa() else str(HELDOUT_SEED_BASE + index)
    return PromptSpec("scene", key, question)


def write_prompt_file(folder, specs: list[PromptSpec], name: str = "heldout") -> Path:
    """Writes prompts in the bench format: `FOLDER/NAME.jsonl`, one {"image", "question"} per line,
    with each image saved as `FOLDER/images/NAME-<i>-<source>.png` (absolute paths in the file).

    Returns:
        The JSON-lines file.
    """
    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, spec in enumerate(specs):
        image, question = materialize(spec)
        entry = {"image": None, "question": question}
        if image is not None:
            path = images / f"{name}-{i:03d}-{spec.source}.png"
            image.save(path)
            entry["image"] = str(path.resolve())
        lines.append(json.dumps(entry))
    out = folder / f"{name}.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def _scene_spec(split: str, index: int, rng: np.random.Generator) -> PromptSpec:
    """Scene `index` of a split of the scene-QA data set: its own question or an open one, half and half.

    Held-out prompts use the "test" split (one question each, types cycling); without the scene-QA
    package the key is a plain seed (training below HELDOUT_SEED_BASE, held-out above).
    """
    open_question = SCENE_QUESTIONS[int(rng.integers(len(SCENE_QUESTIONS)))]
    if not _has_scene_qa():
        seed = index if split == "train" else HELDOUT_SEED_BASE + index
        return PromptSpec("scene", str(seed), open_question)
    sample = _scene_sample(split, index)
    question = sample.questions[int(rng.integers(len(sample.questions)))].question
    if split == "train" and rng.random() < 0.5:
        question = open_question
    return PromptSpec("scene", f"{split}:{index}", question)


def _has_scene_qa() -> bool:
    return importlib.util.find_spec("dream_s_edge.data.dataset") is not None


def _scene_sample(split: str, index: int):
    from dream_s_edge.data.dataset import eval_sample, make_sample

    return make_sample(split, index) if split == "train" else eval_sample(split, index)


def _interleave(groups: list[list[PromptSpec]]) -> list[PromptSpec]:
    """Round-robin over the groups, so a prefix of the list mixes every source."""
    out: list[PromptSpec] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def materialize(spec: PromptSpec) -> tuple[Image.Image | None, str]:
    """The image (None for text) and question of a prompt spec.

    Raises:
        UserInputError: an unknown source, or a photograph scikit-image does not ship.
    """
    if spec.source == "text":
        return None, spec.question
    if spec.source == "scene" and ":" in spec.key:
        split, index = spec.key.split(":")
        return _scene_sample(split, int(index)).image.convert("RGB"), spec.question
    if spec.source == "scene":
        return scene_image(int(spec.key)), spec.question
    if spec.source == "photo":
        return photo_image(spec.key), spec.question
    raise UserInputError(f"Unknown prompt source {spec.source!r}.", hint="use 'scene', 'photo' or 'text'")


def scene_image(seed: int, size: int = 256) -> Image.Image:
    """A procedural scene drawn from a plain seed (scene generator, or simple drawings without it)."""
    if importlib.util.find_spec("dream_s_edge.data.scenes") is not None:
        from dream_s_edge.data.scenes import render_scene, sample_scene

        return render_scene(sample_scene(np.random.default_rng(seed), image_size=size)).convert("RGB")
    return _simple_drawing(seed, size)


def _simple_drawing(seed: int, size: int) -> Image.Image:
    """A few coloured ellipses and rectangles on a plain background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(150, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        x0, y0 = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
        w, h = (int(v) for v in rng.integers(size // 8, size // 3, 2))
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x0 + w, y0 + h), fill=colour)
    return image


def photo_image(name: str) -> Image.Image:
    """A photograph from scikit-image's data folder, as RGB."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise UserInputError("Photograph prompts need scikit-image.", hint="pip install scikit-image")
    path = Path(spec.origin).parent / "data" / name
    if not path.is_file():
        raise UserInputError(f"scikit-image ships no {name}.", note=f"looked at {path}")
    with Image.open(path) as image:
        return image.convert("RGB")
