"""Visual token compression (DREAM VTC): which prompt positions enter the draft's input stream.

At prefill each visual token is scored by the attention it receives in the target's last layer
(mean over heads, summed over queries; the target runner computes it, see
`runtime.runner.PrefillResult.visual_scores`). The draft keeps the most-attended fraction of visual
tokens and every text token. Only the draft's own input stream shrinks: kept tokens keep their
absolute positions (rope and the one-step shift), and the feature memory keeps every position.
"""

from __future__ import annotations

import math

import torch

from runtime.errors import SpecMismatchError


def num_kept(num_visual: int, keep_ratio: float) -> int:
    """Visual tokens kept: ceil(ratio * count), so any positive ratio keeps at least one."""
    if not 0.0 < keep_ratio <= 1.0:
        raise SpecMismatchError("The visual keep ratio must lie in (0, 1].", f"got {keep_ratio}")
    return min(num_visual, math.ceil(keep_ratio * num_visual - 1e-9))


def select_kept(scores, visual_mask, keep_ratio: float) -> torch.Tensor:
    """Positions of the draft's input stream after VTC.

    Args:
        scores: [T] attention each position receives (tensor or array); read at visual positions.
        visual_mask: [T] bool, True at image-token positions.
        keep_ratio: fraction of visual tokens kept, in (0, 1].

    Returns:
        [T'] int64 kept positions in ascending order: every text position and the top
        `num_kept` visual positions by score (ties go to the earlier position).
    """
    scores = torch.as_tensor(scores).flatten()
    visual = torch.as_tensor(visual_mask, dtype=torch.bool).flatten()
    if scores.shape != visual.shape:
        raise SpecMismatchError(
            "Visual scores and visual mask differ in length.",
            f"scores={tuple(scores.shape)}, mask={tuple(visual.shape)}",
        )
    visual_pos = torch.nonzero(visual).flatten()
    keep = num_kept(int(visual_pos.numel()), keep_ratio)
    order = torch.sort(-scores[visual_pos].to(torch.float64), stable=True).indices[:keep]
    kept = ~visual
    kept[visual_pos[order]] = True
    return torch.nonzero(kept).flatten()
