"""Stage 1: teach the vision tower to see, cheaply, with no language model: every visual token learns to
be the language model's input embedding of one word that describes its part of the image.

The connector's tokens form a row-major `G x G` grid over the image, and each cell of the scene's 3 x 3
grid covers a block of them (3 x 3, 3 x 2 or 2 x 2 tokens for G = 8). Within a block, the row through
the cell's centre spells the cell's object (" red", " star", or " none"), the row below it the cell's
place in the question's answer words (" top", " left"), and any other row the object count. So the
language model reads "red star" as a bigram, with "top left" right below it, in its own vocabulary.
The cells of the row that holds the written word spell the word instead of an object.

Each token only describes what lies under it or next to it (an auxiliary head also classifies the
colour, shape and word under every patch of a middle tower layer), so little has to travel. The loss
pulls each token onto the exact embedding of its word (mean squared error, relative to the
embeddings' scale) and classifies it among all slot words by scaled cosine (cross-entropy); accuracy
is the classification's over the content tokens (object, word and count).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from dream_s_edge.data.scenes import Scene, cell_center, word_box
from dream_s_edge.data.vocab import CELL_NAMES, COLOURS, GRID, MAX_OBJECTS, SHAPES, SIZES, WORDS
from dream_s_edge.vision_training.sequences import IGNORE

COUNT_WORDS = tuple(str(n) for n in range(1, MAX_OBJECTS + 1))  # the first slot: no leading space
NONE = " none"
_LABELS = tuple(" " + w for w in ("top", "left", "center", "right", "bottom"))
# Every word a slot can hold, as written mid-text (with its leading space).
SLOT_VOCAB: tuple[str, ...] = (
    COUNT_WORDS
    + (":", ",", NONE)
    + _LABELS
    + tuple(" " + w for w in (*SIZES, *COLOURS, *SHAPES, *WORDS))
)
_INDEX = {w: i for i, w in enumerate(SLOT_VOCAB)}
MSE_WEIGHT = 2.0
PATCH_CLASSES = (len(COLOURS) + 1, len(SHAPES) + 1, len(WORDS) + 1)  # colour, shape, word; 0 = none
PROBE_LAYER = 2  # the tower layer whose patch features the auxiliary head reads


def _axis_blocks(grid: int) -> list[tuple[int, int, int]]:
    """(scene cell index, index within its block, block size) of each token row (or column) of a
    `grid`-token axis: the scene's 3 cells along the axis cover blocks of 3, 2 and 3 tokens for 8."""
    cells = [min(GRID - 1, int((i + 0.5) * GRID / grid)) for i in range(grid)]
    return [(c, i - cells.index(c), cells.count(c)) for i, c in enumerate(cells)]


def _row_role(index: int, size: int) -> str:
    """What a token row of a cell's block spells: the object on the row through the cell's centre,
    the place on the row below it, the count on any other row."""
    roles = ("object", "place") if size == 2 else ("object",) if size == 1 else ("count", "object", "place")
    return roles[index] if index < len(roles) else "count"


def _token_word(scene: Scene, cell: int, row: str, col: int) -> tuple[str, bool]:
    """The word of a token in `cell`'s block on a row of role `row`, at column `col` of the block, and
    whether it carries scene content. Columns 0 and 1 hold the colour and shape (or the cell label's
    words), later ones a comma; the row of the written word spells the word instead of objects."""
    if row == "count":
        return str(len(scene.objects)), True
    if row == "place":
        label = [" " + w for w in CELL_NAMES[cell].split()] + [":"]
        return (label[col] if col < 2 else ","), False
    if scene.word and cell // GRID == scene.word_row:
        return " " + scene.word, True
    if col >= 2:
        return ",", False
    obj = next((o for o in scene.objects if o.cell == cell), None)
    return (" " + (obj.colour, obj.shape)[col] if obj else NONE), True


def slot_text(scene: Scene, grid: int = 8) -> list[tuple[str, bool]]:
    """The word of every token of a `grid x grid` token grid, row-major, with whether it carries
    scene content (else it is the same for every scene)."""
    axis = _axis_blocks(grid)
    return [
        _token_word(scene, axis[r][0] * GRID + axis[c][0], _row_role(*axis[r][1:]), axis[c][1])
        for r in range(grid)
        for c in range(grid)
    ]


def scene_targets(scene: Scene, visual_tokens: int) -> torch.Tensor:
    """Per-token targets [Tv, 2]: the SLOT_VOCAB index of the token's word, and 1 where the token
    carries scene content."""
    words = slot_text(scene, token_grid(visual_tokens))
    return torch.tensor([[_INDEX[w], int(content)] for w, content in words])


def token_grid(visual_tokens: int) -> int:
    """Side G of the square grid of `visual_tokens` connector outputs."""
    side = math.isqrt(visual_tokens)
    assert side * side == visual_tokens, f"visual tokens {visual_tokens} do not form a square grid"
    return side


def patch_targets(scene: Scene, grid: int) -> torch.Tensor:
    """Colour, shape and word class [grid * grid, 3] of the patch grid: an object's classes where the
    patch centre lies well inside it, the word's inside its box, IGNORE near edges, 0 elsewhere."""
    size, step = scene.image_size, scene.image_size / grid
    out = torch.zeros(grid * grid, 3, dtype=torch.long)
    centres = [((t % grid + 0.5) * step, (t // grid + 0.5) * step) for t in range(grid * grid)]
    for obj in scene.objects:
        cx, cy = cell_center(obj.cell, size)
        cx, cy, radius = cx + obj.dx, cy + obj.dy, SIZES[obj.size] * size / 256
        for t, (tx, ty) in enumerate(centres):
            dist = math.hypot(tx - cx, ty - cy)
            if dist < 0.7 * radius:
                out[t, :2] = torch.tensor([list(COLOURS).index(obj.colour) + 1, SHAPES.index(obj.shape) + 1])
            elif dist < radius + step / 2 and out[t, 0] == 0:
                out[t, :2] = IGNORE
    if scene.word:
        left, top, right, bottom = word_box(scene)
        for t, (tx, ty) in enumerate(centres):
            inside = left <= tx <= right and top <= ty <= bottom
            near = left - step / 2 <= tx <= right + step / 2 and top - step / 2 <= ty <= bottom + step / 2
            out[t, 2] = WORDS.index(scene.word) + 1 if inside else IGNORE if near else 0
    return out


def slot_token_ids(tokenizer) -> list[int]:
    """The token id of each SLOT_VOCAB word (its first token, should a tokenizer split it)."""
    return [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in SLOT_VOCAB]


class SlotHead(nn.Module):
    """Reads visual tokens as slot words: scaled cosines to the language model's word embeddings."""

    def __init__(self, embeddings: torch.Tensor, tokenizer, patch_dim: int):
        """embeddings: [V, D] the language model's input embedding table (not trained here);
        patch_dim: width of the tower's patch features, read by the auxiliary patch classifier."""
        super().__init__()
        words = embeddings[slot_token_ids(tokenizer)].detach().clone()
        self.register_buffer("words", words, persistent=False)  # [C, D]
        self.log_temperature = nn.Parameter(torch.tensor(math.log(10.0)))
        self.patch = nn.Linear(patch_dim, sum(PATCH_CLASSES))

    def patch_loss(self, patches: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the patch classifier: patches [B, P, E], targets [B, P, 3]."""
        logits = self.patch(patches).split(PATCH_CLASSES, dim=-1)  # [B, P, C_g] each
        losses = [
            F.cross_entropy(g.flatten(0, 1), targets[..., i].flatten(), ignore_index=IGNORE)
            for i, g in enumerate(logits)
            if (targets[..., i] != IGNORE).any()
        ]
        return torch.stack(losses).mean()

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        """visual tokens [B, Tv, D] -> logits over SLOT_VOCAB [B, Tv, C]."""
        unit = F.normalize(visual, dim=-1)
        return self.log_temperature.exp() * unit @ F.normalize(self.words, dim=-1).T

    def loss(self, visual: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, accuracy on content slots) of visual tokens [B, Tv, D] against targets [B, Tv, 2]."""
        word, content = targets[..., 0], targets[..., 1].bool()  # [B, Tv] each
        logits = self(visual)
        ce = F.cross_entropy(logits.transpose(1, 2), word)
        mse = (visual - self.words[word]).pow(2).mean() / self.words.pow(2).mean()
        right = (logits.argmax(-1) == word)[content].float()
        return ce + MSE_WEIGHT * mse, right.mean() if right.numel() else right.new_ones(())
