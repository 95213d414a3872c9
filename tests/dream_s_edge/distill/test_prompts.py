"""distill/prompts.py: held-out prompts with open scene questions, and the bench-file writer behind
`dream-s-edge bench-prompts`."""

from __future__ import annotations

import json

from PIL import Image

from dream_s_edge.cli import main
from dream_s_edge.distill.prompts import SCENE_QUESTIONS, heldout_prompts, training_prompts


def test_open_scenes_leave_the_other_heldout_prompts_unchanged():
    plain = heldout_prompts(4, 2, seed=0)
    mixed = heldout_prompts(4, 2, seed=0, num_open_scene=3)
    assert [p for p in mixed if p in plain] == plain  # same prompts, same order
    extra = [p for p in mixed if p not in plain]
    assert len(extra) == 3 and all(p.source == "scene" and p.question in SCENE_QUESTIONS for p in extra)
    scene_keys = [p.key for p in mixed if p.source == "scene"]
    assert len(set(scene_keys)) == len(scene_keys)  # an open scene is never one of the QA scenes
    train_keys = {p.key for p in training_prompts(8, 0, 0, seed=0)}
    assert not train_keys & set(scene_keys)


def test_bench_prompts_writes_a_bench_file(tmp_path, capsys):
    assert main(["bench-prompts", "--out", str(tmp_path), "--scenes", "2", "--open-scenes", "1",
                 "--photos", "2", "--name", "held"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "held.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(line["question"] for line in lines)
    for line in lines:
        with Image.open(line["image"]) as image:
            assert image.mode == "RGB"
    assert "5 prompts" in capsys.readouterr().out


def test_bench_prompts_refuses_no_prompts(tmp_path, capsys):
    assert main(["bench-prompts", "--out", str(tmp_path), "--scenes", "0", "--open-scenes", "0",
                 "--photos", "0"]) == 2
    assert "error:" in capsys.readouterr().err


def test_mixed_heldout_prompts_take_every_kind_in_turn_and_nest():
    from dream_s_edge.distill.prompts import mixed_heldout_prompts

    six = mixed_heldout_prompts(6, seed=0)
    assert [p.source for p in six] == ["scene", "photo", "scene"] * 2
    assert six[2].question in SCENE_QUESTIONS and six[5].question in SCENE_QUESTIONS  # the open ones
    assert mixed_heldout_prompts(9, seed=0)[:6] == six  # calibration / measurement slices stay disjoint
    assert len({p.key for p in six if p.source == "scene"}) == 4


def test_calibration_prompts_are_their_own_mix() -> None:
    from dream_s_edge.distill.prompts import calibration_prompts, heldout_prompts, training_prompts

    specs = calibration_prompts(64)
    assert specs == calibration_prompts(64) and len(specs) == 64
    kinds = [s.source for s in specs]
    assert (kinds.count("scene"), kinds.count("photo"), kinds.count("text")) == (40, 16, 8)
    scenes = {s.key for s in specs if s.source == "scene"}
    assert all(key.startswith("train:") or int(key) < 1_000_000 for key in scenes)  # never a held-out scene
    distilled = {s.key for seed in (0, 1) for s in training_prompts(330, 88, 174, seed) if s.source == "scene"}
    assert len(scenes & distilled) <= 1  # a random collision at most, out of a million scenes
    assert not {(s.key, s.question) for s in specs} & {(s.key, s.question) for s in heldout_prompts(12, 8, 0, 8)}
    assert len(calibration_prompts(5)) == 5
