"""The scene-QA data set is deterministic, its splits are disjoint, and every answer follows from the
scene (and, for counts and colours, from the drawn pixels)."""

import numpy as np
import pytest

from dream_s_edge.data import QUESTION_TYPES, SPLIT_OFFSETS, eval_sample, make_sample, sample_seed
from dream_s_edge.data.scenes import cell_center
from dream_s_edge.data.vocab import CELL_NAMES, COLOURS, SHAPES, WORDS


def test_same_seed_same_sample():
    a, b = make_sample("train", 7), make_sample("train", 7)
    assert a.scene == b.scene and a.questions == b.questions and a.description == b.description
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert make_sample("train", 8).scene != a.scene


def test_splits_are_disjoint_by_seed():
    seeds = {split: {sample_seed(split, i) for i in (0, 1, 999, 10**9 - 1)} for split in SPLIT_OFFSETS}
    assert (
        not (seeds["train"] & seeds["val"])
        and not (seeds["train"] & seeds["test"])
        and not (seeds["val"] & seeds["test"])
    )
    scenes = {split: {make_sample(split, i).scene for i in range(20)} for split in SPLIT_OFFSETS}
    assert not (scenes["train"] & scenes["val"]) and not (scenes["train"] & scenes["test"])
    with pytest.raises(ValueError):
        sample_seed("train", 10**9)


def test_eval_types_cycle():
    assert [eval_sample("test", i).questions[0].qtype for i in range(10)] == list(QUESTION_TYPES) * 2


@pytest.mark.parametrize("index", range(40))
def test_every_answer_is_derivable(index):
    sample = make_sample("train", index)
    objects = sample.scene.objects
    for qa in sample.questions:
        if qa.qtype == "count":
            assert qa.answer == str(len(objects))
        elif qa.qtype == "word":
            assert qa.answer == sample.scene.word and qa.answer in WORDS
        elif qa.qtype == "colour":
            (obj,) = [o for o in objects if o.shape in qa.question]
            assert qa.answer == obj.colour
        elif qa.qtype == "shape":
            (obj,) = [o for o in objects if o.colour in qa.question]
            assert qa.answer == obj.shape and qa.answer in SHAPES
        else:
            (obj,) = [o for o in objects if f"{o.colour} {o.shape}" in qa.question]
            assert qa.answer == CELL_NAMES[obj.cell]


@pytest.mark.parametrize("index", range(15))
def test_drawn_pixels_match_the_scene(index):
    sample = make_sample("train", index)
    pixels = np.asarray(sample.image).astype(int)
    for obj in sample.scene.objects:
        cx, cy = cell_center(obj.cell, sample.scene.image_size)
        x, y = int(cx + obj.dx), int(cy + obj.dy)
        assert np.abs(pixels[y, x] - np.asarray(COLOURS[obj.colour])).max() <= 1, obj
    assert str(len(sample.scene.objects)) in {str(n) for n in range(1, 7)}
    assert sample.caption.split()[0].lower() in {"one", "two", "three", "four", "five", "six"}
