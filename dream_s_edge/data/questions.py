"""Questions with one short right answer, captions and longer descriptions, all derived from a `Scene`.

Question types (`QUESTION_TYPES`): colour, count, shape, position and word. A question is only asked
when its answer is unambiguous in the scene (e.g. "What colour is the star?" needs exactly one star),
so every answer can be recomputed from the scene data alone; tests do exactly that.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from dream_s_edge.data.scenes import Scene, SceneObject
from dream_s_edge.data.vocab import CELL_NAMES, NUMBER_WORDS

QUESTION_TYPES: tuple[str, ...] = ("colour", "count", "shape", "position", "word")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": (
        "What colour is the {shape}?",
        "What is the colour of the {shape}?",
        "Which colour is the {shape}?",
    ),
    "count": ("How many shapes are there?", "How many shapes are in the image?", "Count the shapes."),
    "shape": (
        "What shape is the {colour} object?",
        "Which shape is {colour}?",
        "What is the {colour} shape?",
    ),
    "position": ("Where is the {colour} {shape}?", "In which part of the image is the {colour} {shape}?"),
    "word": ("What word is written in the image?", "What does the text say?", "Which word is written?"),
}


@dataclass(frozen=True)
class QA:
    """One question about a scene and its one right answer."""

    qtype: str  # one of QUESTION_TYPES
    question: str
    answer: str  # lower case, no punctuation: compared by exact match


def _unique(objects: tuple[SceneObject, ...], key) -> list[SceneObject]:
    """Objects whose `key` value no other object in the scene shares."""
    counts = Counter(key(o) for o in objects)
    return [o for o in objects if counts[key(o)] == 1]


def ask(scene: Scene, qtype: str, rng: np.random.Generator) -> QA | None:
    """A question of type `qtype` with an unambiguous answer in `scene`, or None if none exists."""
    template = str(rng.choice(TEMPLATES[qtype]))
    if qtype == "count":
        return QA(qtype, template, str(len(scene.objects)))
    if qtype == "word":
        return QA(qtype, template, scene.word) if scene.word else None
    candidates = _unique(scene.objects, _NAMED_BY[qtype])
    if not candidates:
        return None
    return _about(candidates[int(rng.integers(len(candidates)))], qtype, template)


# What names an object in a question of each object type (the colour question names its shape, ...).
_NAMED_BY = {
    "colour": lambda o: o.shape,
    "shape": lambda o: o.colour,
    "position": lambda o: (o.colour, o.shape),
}


def _about(obj: SceneObject, qtype: str, template: str) -> QA:
    question = template.format(shape=obj.shape, colour=obj.colour)
    answer = {"colour": obj.colour, "shape": obj.shape, "position": CELL_NAMES[obj.cell]}[qtype]
    return QA(qtype, question, answer)


def ask_each(scene: Scene, qtype: str, rng: np.random.Generator) -> list[QA]:
    """A question of object type `qtype` (colour, shape or position) about every object it can name
    unambiguously, in scene order, each with a seeded template."""
    return [
        _about(obj, qtype, str(rng.choice(TEMPLATES[qtype])))
        for obj in _unique(scene.objects, _NAMED_BY[qtype])
    ]


def all_questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """One question of every type the scene can answer, in QUESTION_TYPES order."""
    return [qa for qa in (ask(scene, t, rng) for t in QUESTION_TYPES) if qa is not None]


def _phrase(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape}"


def caption(scene: Scene) -> str:
    """A one-sentence caption: what is drawn, on what background."""
    n = len(scene.objects)
    things = ", ".join(_phrase(o) for o in scene.objects)
    noun = "shape" if n == 1 else "shapes"
    text = f"{NUMBER_WORDS[n].capitalize()} {noun} on a {scene.background} background: {things}."
    if scene.word:
        text += f' The word "{scene.word.upper()}" is written across it.'
    return text


def relation(a: SceneObject, b: SceneObject) -> str:
    """How `a` lies relative to `b`: "left of", "right of", "above", "below" or "next to"."""
    if a.row != b.row:
        return "above" if a.row < b.row else "below"
    if a.col != b.col:
        return "left of" if a.col < b.col else "right of"
    return "next to"


def describe(scene: Scene) -> str:
    """A longer description: the caption, each object's place, and relations between neighbours."""
    sentences = [caption(scene)]
    for obj in scene.objects:
        sentences.append(f"{_phrase(obj).capitalize()} is at the {CELL_NAMES[obj.cell]}.")
    for a, b in zip(scene.objects, scene.objects[1:], strict=False):
        sentences.append(f"The {a.colour} {a.shape} is {relation(a, b)} the {b.colour} {b.shape}.")
    return " ".join(sentences)
