"""What the adapter reads off the target's attention maps: entropy per layer and visual scores.

DREAM picks the intermediate feature layer by attention entropy, H_l(i) = -sum_j a_l(i,j) log a_l(i,j),
mean over heads; VTC scores each key position by the attention it receives in the last layer (mean
over heads, summed over queries). Both need the attention probabilities, which HF returns only with
eager attention. Hidden slots carry probability 0 and add nothing (xlogy(0, 0) = 0).
"""

from __future__ import annotations

import torch


def attention_entropy(attentions: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Consumes per-layer probabilities L x [B, H, T, S], produces entropy [L, B, T] (mean over heads)."""
    per_layer = []
    for probs in attentions:
        probs = probs.float()
        per_layer.append(-torch.special.xlogy(probs, probs).sum(-1).mean(1))  # [B, T]
    return torch.stack(per_layer)


def received_attention(last_layer: torch.Tensor, num_visible: int) -> torch.Tensor:
    """Consumes last-layer probabilities [B, H, T, S], produces attention received per key [B, S_visible]."""
    return last_layer[..., :num_visible].float().mean(1).sum(1)
