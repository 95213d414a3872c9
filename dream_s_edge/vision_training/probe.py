"""Stage 1: teach the vision tower to see, cheaply, with attribute heads and no language model.

A scene's data gives per-image targets: the shape count, the shape and colour in each grid cell (or
empty) and the written word (or none). A small head reads them off the connector's visual tokens, so
tower and connector learn features that carry exactly what the questions ask about, at a few percent of
the cost of a step through the language model. A second term keeps the visual tokens at the scale of
the language model's token embeddings, which stage 2 then starts from. The head is thrown away.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dream_s_edge.data.scenes import Scene
from dream_s_edge.data.vocab import COLOURS, GRID, MAX_OBJECTS, SHAPES, WORDS

CELLS = GRID * GRID
# (name, classes per slot, slots): class 0 means "empty" or "none".
GROUPS: tuple[tuple[str, int, int], ...] = (
    ("count", MAX_OBJECTS + 1, 1),
    ("shape", len(SHAPES) + 1, CELLS),
    ("colour", len(COLOURS) + 1, CELLS),
    ("word", len(WORDS) + 1, 1),
)
_COLOUR_INDEX = {name: i for i, name in enumerate(COLOURS)}


def scene_targets(scene: Scene) -> torch.Tensor:
    """Class targets of one scene, one per slot of GROUPS, concatenated."""  # [S]
    shape, colour = [0] * CELLS, [0] * CELLS
    for obj in scene.objects:
        shape[obj.cell] = SHAPES.index(obj.shape) + 1
        colour[obj.cell] = _COLOUR_INDEX[obj.colour] + 1
    word = WORDS.index(scene.word) + 1 if scene.word else 0
    return torch.tensor([len(scene.objects), *shape, *colour, word])


class ProbeHead(nn.Module):
    """Reads attribute logits off the visual tokens: per-token projection, then one linear layer."""

    def __init__(self, tokens: int, dim: int, width: int = 32):
        super().__init__()
        self.reduce = nn.Linear(dim, width)
        self.out = nn.Linear(tokens * width, sum(classes * slots for _, classes, slots in GROUPS))

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        """visual tokens [B, Tv, D] -> attribute logits [B, sum(classes * slots)]."""
        return self.out(F.gelu(self.reduce(visual)).flatten(1))


def probe_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over all slots, and the fraction of slots predicted right.

    Args:
        logits: [B, sum(classes * slots)] from ProbeHead.
        targets: [B, S] from scene_targets.
    """
    losses, hits, offset, slot = [], [], 0, 0
    for _, classes, slots in GROUPS:
        group = logits[:, offset : offset + classes * slots].reshape(-1, slots, classes)  # [B, slots, C]
        target = targets[:, slot : slot + slots]  # [B, slots]
        losses.append(F.cross_entropy(group.transpose(1, 2), target))
        hits.append((group.argmax(-1) == target).float().mean())
        offset, slot = offset + classes * slots, slot + slots
    return torch.stack(losses).mean(), torch.stack(hits).mean()


def scale_loss(visual: torch.Tensor, target_rms: float) -> torch.Tensor:
    """Squared log-ratio of the visual tokens' RMS to the token embeddings' RMS."""
    rms = visual.pow(2).mean(-1).sqrt()  # [B, Tv]
    return torch.log(rms / target_rms).pow(2).mean()
