"""Which QA turns a training image gets: seeded, with extra position turns about other objects and the
caption turn first for about half the images that have one."""

import numpy as np

from dream_s_edge.data import make_sample
from dream_s_edge.data.questions import ask_each
from dream_s_edge.data.vocab import CELL_NAMES
from dream_s_edge.vision_training.batches import pick_turns


def _is_position(question: str) -> bool:
    return question.startswith(("Where is", "In which part"))


def test_ask_each_names_every_distinct_object_once():
    for index in range(30):
        scene = make_sample("train", index).scene
        qas = ask_each(scene, "position", np.random.default_rng(index))
        named = [(o.colour, o.shape) for o in scene.objects]
        unique = [o for o in scene.objects if named.count((o.colour, o.shape)) == 1]
        assert [qa.answer for qa in qas] == [CELL_NAMES[o.cell] for o in unique]
        assert all(f"{o.colour} {o.shape}" in qa.question for qa, o in zip(qas, unique, strict=True))


def test_turns_are_seeded_and_add_position_turns_without_repeats():
    for index in range(40):
        sample = make_sample("train", index)
        turns = pick_turns(sample, 3, 0.0, positions=2)
        assert turns == pick_turns(sample, 3, 0.0, positions=2)
        plain = pick_turns(sample, 3, 0.0)
        assert turns[: len(plain)] == plain
        extra = turns[len(plain) :]
        assert len(extra) <= 2 and all(_is_position(q) for q, _ in extra)
        places = [a for q, a in turns if _is_position(q)]
        assert len(places) == len(set(places))  # never asks where the same object is twice


def test_caption_turn_comes_first_for_about_half_the_images():
    firsts, captioned = 0, 0
    for index in range(200):
        sample = make_sample("train", index)
        turns = pick_turns(sample, 5, 1.0, positions=2)
        at = [i for i, (_, answer) in enumerate(turns) if answer == sample.caption]
        assert len(at) == 1
        captioned += 1
        firsts += at == [0]
        assert [t for t in turns if t[1] != sample.caption] == pick_turns(sample, 5, 0.0, positions=2)
    assert 0.35 < firsts / captioned < 0.65
