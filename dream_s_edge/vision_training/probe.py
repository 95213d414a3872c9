"""Stage 1: teach the vision tower to see, cheaply, with dense lexical targets and no language model.

The connector's visual tokens form a row-major `G x G` grid over the image (pixel shuffle keeps the
patch layout). Each token gets per-token targets from the scene data: the colour and shape of the object
under it (or none), the written word under it (or none), and the row and column of the scene's 3 x 3
grid it lies in. The whole image also gets its object count.

The head that reads these targets has almost no parameters of its own: a class's logit is the cosine
between the visual token and the language model's own input embedding of the class's answer word
(`red`, `star`, `top`, `cat`, `3`, ...), times a learned temperature. So training pushes every visual
token towards the sum of the words that describe it, which is a format the frozen language model
already reads; stage 2 then only has to fine-tune that reading. "None" classes get a learned vector.
A second term keeps the visual tokens at the scale of the token embeddings.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F

from dream_s_edge.data.scenes import Scene, cell_center, word_box
from dream_s_edge.data.vocab import COLOURS, GRID, MAX_OBJECTS, SHAPES, SIZES, WORDS

IGNORE = -100
ROW_WORDS = ("top", "center", "bottom")
COL_WORDS = ("left", "center", "right")
COUNT_WORDS = tuple(str(n) for n in range(1, MAX_OBJECTS + 1))
# Per-token groups: (name, answer words, has a "none" class at index 0).
TOKEN_GROUPS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("colour", tuple(COLOURS), True),
    ("shape", SHAPES, True),
    ("word", WORDS, True),
    ("row", ROW_WORDS, False),
    ("col", COL_WORDS, False),
)
_COLOUR_INDEX = {name: i for i, name in enumerate(COLOURS)}


def token_grid(visual_tokens: int) -> int:
    """Side G of the square grid of `visual_tokens` connector outputs."""
    side = math.isqrt(visual_tokens)
    assert side * side == visual_tokens, f"visual tokens {visual_tokens} do not form a square grid"
    return side


def _object_targets(scene: Scene, grid: int) -> tuple[list[int], list[int]]:
    """Colour and shape class per token: the object's class where the token's centre lies inside it
    (and always at the token holding the object's centre), IGNORE near its edge, 0 elsewhere."""
    size, step = scene.image_size, scene.image_size / grid
    colour, shape = [0] * grid * grid, [0] * grid * grid
    for obj in scene.objects:
        cx, cy = cell_center(obj.cell, size)
        cx, cy = cx + obj.dx, cy + obj.dy
        radius = SIZES[obj.size] * size / 256
        home = min(grid - 1, int(cy // step)) * grid + min(grid - 1, int(cx // step))
        for t in range(grid * grid):
            tx, ty = (t % grid + 0.5) * step, (t // grid + 0.5) * step
            dist = math.hypot(tx - cx, ty - cy)
            if t == home or dist < 0.7 * radius:
                colour[t], shape[t] = _COLOUR_INDEX[obj.colour] + 1, SHAPES.index(obj.shape) + 1
            elif dist < radius + step / 2 and colour[t] == 0:
                colour[t] = shape[t] = IGNORE
    return colour, shape


def _word_targets(scene: Scene, grid: int) -> list[int]:
    """Word class per token: the word where the token's centre lies in its box, IGNORE near it, 0 else."""
    out = [0] * grid * grid
    if not scene.word:
        return out
    step = scene.image_size / grid
    left, top, right, bottom = word_box(scene)
    for t in range(grid * grid):
        tx, ty = (t % grid + 0.5) * step, (t // grid + 0.5) * step
        if left <= tx <= right and top <= ty <= bottom:
            out[t] = WORDS.index(scene.word) + 1
        elif left - step / 2 <= tx <= right + step / 2 and top - step / 2 <= ty <= bottom + step / 2:
            out[t] = IGNORE
    return out


@lru_cache(maxsize=8)
def _place_targets(grid: int) -> tuple[list[int], list[int]]:
    """Row and column of the scene's 3 x 3 grid that each token's centre lies in."""
    cells = [min(GRID - 1, int((i + 0.5) * GRID / grid)) for i in range(grid)]
    return [cells[t // grid] for t in range(grid * grid)], [cells[t % grid] for t in range(grid * grid)]


def scene_targets(scene: Scene, visual_tokens: int) -> torch.Tensor:
    """Per-token class targets, one column per TOKEN_GROUPS entry, and the count class in row 0 of an
    extra column (the rest of that column is IGNORE)."""  # [Tv, len(TOKEN_GROUPS) + 1]
    grid = token_grid(visual_tokens)
    colour, shape = _object_targets(scene, grid)
    rows, cols = _place_targets(grid)
    count = [len(scene.objects) - 1] + [IGNORE] * (grid * grid - 1)
    return torch.tensor([colour, shape, _word_targets(scene, grid), rows, cols, count]).T


def answer_token_ids(tokenizer, words: tuple[str, ...]) -> list[int]:
    """The first token of each answer word as the model writes it (no leading space)."""
    return [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]


class LexicalHead(nn.Module):
    """Class logits as scaled cosines between visual tokens and the language model's word embeddings."""

    def __init__(self, embeddings: torch.Tensor, tokenizer):
        """embeddings: [V, D] the language model's input embedding table (not trained here)."""
        super().__init__()
        dim = embeddings.shape[1]
        for name, words, _ in TOKEN_GROUPS:
            rows = embeddings[answer_token_ids(tokenizer, words)].detach().clone()
            self.register_buffer(f"words_{name}", rows, persistent=False)  # [C, D]
        counts = embeddings[answer_token_ids(tokenizer, COUNT_WORDS)].detach().clone()
        self.register_buffer("words_count", counts, persistent=False)  # [C, D]
        groups = [name for name, _, with_none in TOKEN_GROUPS if with_none]
        self.none = nn.ParameterDict({name: nn.Parameter(torch.randn(1, dim) * 0.02) for name in groups})
        self.log_temperature = nn.Parameter(torch.full((len(TOKEN_GROUPS) + 1,), math.log(10.0)))

    def _classes(self, name: str) -> torch.Tensor:
        rows = getattr(self, f"words_{name}")
        return torch.cat([self.none[name], rows]) if name in self.none else rows  # [C, D]

    def forward(self, visual: torch.Tensor) -> list[torch.Tensor]:
        """visual tokens [B, Tv, D] -> per-group logits: [B, Tv, C_g] per TOKEN_GROUPS entry, then the
        count logits [B, MAX_OBJECTS] from the mean token."""
        unit = F.normalize(visual, dim=-1)
        out = []
        for g, (name, _, _) in enumerate(TOKEN_GROUPS):
            out.append(self.log_temperature[g].exp() * unit @ F.normalize(self._classes(name), dim=-1).T)
        pooled = F.normalize(visual.mean(1), dim=-1)  # [B, D]
        out.append(self.log_temperature[-1].exp() * pooled @ F.normalize(self.words_count, dim=-1).T)
        return out


def probe_loss(logits: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the groups, and the mean per-group accuracy on labelled tokens, where
    "none" tokens count as a fifth of a labelled one (they are the majority).

    Args:
        logits: LexicalHead output.
        targets: [B, Tv, len(TOKEN_GROUPS) + 1] from scene_targets.
    """
    losses, hits = [], []
    for g, group in enumerate(logits[:-1]):
        target = targets[..., g]  # [B, Tv]
        weight = torch.where(target == 0, 0.2, 1.0) * (target != IGNORE)
        nll = F.cross_entropy(group.transpose(1, 2), target.clamp(min=0), reduction="none")  # [B, Tv]
        losses.append((nll * weight).sum() / weight.sum().clamp(min=1e-6))
        right = (group.argmax(-1) == target).float()
        hits.append((right * weight).sum() / weight.sum().clamp(min=1e-6))
    count = targets[:, 0, -1]  # [B]
    losses.append(F.cross_entropy(logits[-1], count))
    hits.append((logits[-1].argmax(-1) == count).float().mean())
    return torch.stack(losses).mean(), torch.stack(hits).mean()


def scale_loss(visual: torch.Tensor, target_rms: float) -> torch.Tensor:
    """Squared log-ratio of the visual tokens' RMS to the token embeddings' RMS."""
    rms = visual.pow(2).mean(-1).sqrt()  # [B, Tv]
    return torch.log(rms / target_rms).pow(2).mean()
