"""Stage-1 slot targets spell the scene out, and the slot head reads the language model's own words."""

import torch

from dream_s_edge.data import make_sample
from dream_s_edge.data.scenes import cell_center
from dream_s_edge.data.vocab import CELL_NAMES, COLOURS, SHAPES, WORDS
from dream_s_edge.vision_training.probe import (
    NONE,
    SLOT_VOCAB,
    SlotHead,
    patch_targets,
    scene_targets,
    slot_text,
    slot_token_ids,
)


def _with_word(split="train"):
    return next(
        s for s in (make_sample(split, i) for i in range(100)) if s.scene.word and len(s.scene.objects) > 1
    )


def test_tokens_spell_out_what_lies_under_them():
    scene = _with_word().scene
    words = slot_text(scene, 8)  # 8 x 8 tokens; scene cells cover token rows/columns {0-2}, {3-4}, {5-7}
    object_row, place_row, first_col = (1, 3, 6), (2, 4, 7), (0, 3, 5)
    for obj in scene.objects:
        at = object_row[obj.row] * 8 + first_col[obj.col]  # the row through the cell's centre
        assert [w for w, _ in words[at : at + 2]] == [" " + obj.colour, " " + obj.shape]
        at = place_row[obj.row] * 8 + first_col[obj.col]
        assert "".join(w for w, _ in words[at : at + 2]).strip(" :") == CELL_NAMES[obj.cell]
    assert {w for w, _ in words[object_row[scene.word_row] * 8 :][:8]} == {" " + scene.word}
    for row in (0, 5):  # the rows left over hold the count
        assert {w for w, _ in words[row * 8 : row * 8 + 8]} == {str(len(scene.objects))}
    empty = set(range(9)) - {o.cell for o in scene.objects} - {scene.word_row * 3 + c for c in range(3)}
    assert all(words[object_row[e // 3] * 8 + first_col[e % 3]][0] == NONE for e in empty)


def test_targets_are_fixed_per_slot():
    a, b = (make_sample("train", i).scene for i in range(2))
    ta, tb = scene_targets(a, 64), scene_targets(b, 64)  # [64, 2]
    assert ta.shape == (64, 2) and (ta[:, 1] == tb[:, 1]).all()  # a slot's role does not depend on the scene
    fixed = ta[:, 1] == 0
    assert (ta[fixed, 0] == tb[fixed, 0]).all() and SLOT_VOCAB[int(ta[16, 0])] == " top"
    assert scene_targets(a, 16).shape == (16, 2)


def test_head_reads_word_embeddings(default_target_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_target_dir)
    assert len(set(slot_token_ids(tokenizer))) == len(SLOT_VOCAB)  # every slot word is its own token
    torch.manual_seed(0)
    embeddings = torch.randn(len(tokenizer), 576)
    head = SlotHead(embeddings, tokenizer, patch_dim=8)
    targets = scene_targets(_with_word().scene, 64)[None]  # [1, 64, 2]
    exact = embeddings[torch.tensor(slot_token_ids(tokenizer))][targets[..., 0]]  # [1, 64, D]
    loss, accuracy = head.loss(exact, targets)
    noisy_loss, _ = head.loss(exact + 0.5 * torch.randn_like(exact), targets)
    assert accuracy == 1.0 and loss < noisy_loss
    wrong = targets.clone()
    wrong[0, 0, 0] = (wrong[0, 0, 0] + 1) % len(SLOT_VOCAB)
    assert head.loss(exact, wrong)[1] < 1.0


def test_patch_targets_mark_objects_and_the_word():
    sample = _with_word()
    targets = patch_targets(sample.scene, 16)  # [256, 3], 16-pixel patches
    for obj in sample.scene.objects:
        cx, cy = cell_center(obj.cell, 256)
        centre = int((cy + obj.dy) // 16) * 16 + int((cx + obj.dx) // 16)
        assert targets[centre, 0] == list(COLOURS).index(obj.colour) + 1
        assert targets[centre, 1] == SHAPES.index(obj.shape) + 1
    rows = (targets[:, 2] == WORDS.index(sample.scene.word) + 1).nonzero()[:, 0] // 16
    assert len(rows) > 0 and all(int(r) * 3 // 16 == sample.scene.word_row for r in rows)


def test_patch_loss_is_lower_for_the_right_classes():
    torch.manual_seed(0)
    head = SlotHead(torch.randn(60000, 16), _tokenizer_stub(), patch_dim=4)
    targets = torch.tensor([[[1, 2, 0], [0, 0, 3]]])  # [1, 2, 3]
    patches = torch.randn(1, 2, 4)
    before = head.patch_loss(patches, targets)
    optimizer = torch.optim.SGD(head.patch.parameters(), lr=0.5)
    for _ in range(50):
        optimizer.zero_grad()
        head.patch_loss(patches, targets).backward()
        optimizer.step()
    assert head.patch_loss(patches, targets) < 0.5 * before


def _tokenizer_stub():
    """Maps each slot word to its own id, as a real tokenizer's single-token words do."""
    index = {w: i for i, w in enumerate(SLOT_VOCAB)}
    return lambda text, add_special_tokens=False: {"input_ids": [index[text]]}
