"""Stage-1 targets follow the scene data, and the lexical head reads the language model's own words."""

import torch

from dream_s_edge.data import make_sample
from dream_s_edge.data.scenes import cell_center
from dream_s_edge.data.vocab import COLOURS, SHAPES, WORDS
from dream_s_edge.vision_training.probe import (
    COUNT_WORDS,
    IGNORE,
    TOKEN_GROUPS,
    LexicalHead,
    answer_token_ids,
    probe_loss,
    scene_targets,
)


def _with_word(split="train"):
    return next(
        s for s in (make_sample(split, i) for i in range(100)) if s.scene.word and len(s.scene.objects) > 1
    )


def test_targets_follow_the_scene():
    sample = _with_word()
    targets = scene_targets(sample.scene, 64)  # [64, 6]
    assert targets.shape == (64, len(TOKEN_GROUPS) + 1)
    for obj in sample.scene.objects:
        cx, cy = cell_center(obj.cell, 256)
        home = int((cy + obj.dy) // 32) * 8 + int((cx + obj.dx) // 32)
        assert targets[home, 0] == list(COLOURS).index(obj.colour) + 1
        assert targets[home, 1] == SHAPES.index(obj.shape) + 1
    word_tokens = (targets[:, 2] == WORDS.index(sample.scene.word) + 1).nonzero()[:, 0]
    assert len(word_tokens) > 0 and all(
        t // 8 * 3 // 8 == sample.scene.word_row for t in word_tokens.tolist()
    )
    assert targets[0, 3] == 0 and targets[0, 4] == 0 and targets[63, 3] == 2 and targets[63, 4] == 2
    assert targets[0, 5] == len(sample.scene.objects) - 1 and (targets[1:, 5] == IGNORE).all()


def test_head_reads_word_embeddings(default_target_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_target_dir)
    torch.manual_seed(0)
    embeddings = torch.randn(len(tokenizer), 576)  # the real width: random words are near-orthogonal
    head = LexicalHead(embeddings, tokenizer)

    def word(w):
        return embeddings[answer_token_ids(tokenizer, (w,))[0]]

    visual = (word("purple") + word("star") + word("fox") + word("bottom") + word("left") + word("3"))[
        None, None
    ]
    logits = head(visual)
    picks = [int(g[0, 0].argmax()) for g in logits[:-1]]
    assert picks == [
        list(COLOURS).index("purple") + 1,
        SHAPES.index("star") + 1,
        WORDS.index("fox") + 1,
        2,
        0,
    ]
    assert COUNT_WORDS[int(logits[-1][0].argmax())] == "3"
    target = torch.tensor([[[picks[0], picks[1], picks[2], 2, 0, 2]]])
    loss, accuracy = probe_loss(logits, target)
    wrong = target.clone()
    wrong[..., 0] = list(COLOURS).index("red") + 1
    assert accuracy == 1.0 and loss < probe_loss(logits, wrong)[0]
