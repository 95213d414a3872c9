"""The DREAM distillation losses, with a true per-token KL.

    loss = λ_KL · mean_t KL(p_target(t) ‖ q_draft(t))              (sum over the vocabulary)
         + λ_feat · mean_t SmoothL1(draft features(t), target last-layer features(t))
         + λ_intermed · mean_t SmoothL1(early draft features(t), selected intermediate feature(t))

Means run over the masked (answer) tokens t; the SmoothL1 terms average over the H feature
components of each token first. The DREAM reference averages its KL over the vocabulary too, which
silently divides it by V (~3e-5 for a 32k vocabulary); here the KL of a token is its full sum.
With a reduced draft vocabulary (EAGLE-3's d2t) the target distribution is renormalised over the
draft's ids, as EAGLE-3 does, so the KL stays finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from dream_s_edge.draft.model import DraftOutput


@dataclass(frozen=True)
class LossWeights:
    """λ of each term (paper: 1.0 / 0.2 / 0.2; 0.4 on the feature terms hurts)."""

    kl: float = 1.0
    feat: float = 0.2
    intermed: float = 0.2


def kl_per_token(target_logits: torch.Tensor, draft_logits: torch.Tensor,
                 d2t: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p_target ‖ q_draft) of each token, summed over the vocabulary.

    Args:
        target_logits: [n, V] the target's logits.
        draft_logits: [n, V_d] the draft's logits (V_d = V without d2t).
        d2t: [V_d] int64 draft -> target ids, or None.

    Returns:
        [n] float32 KL in nats.
    """
    if d2t is not None:
        target_logits = target_logits.index_select(-1, d2t)
    log_p = F.log_softmax(target_logits.float(), dim=-1)
    log_q = F.log_softmax(draft_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def feature_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SmoothL1 per token, mean over the H components: [n, H] x2 -> [n]."""
    return F.smooth_l1_loss(pred.float(), target.float(), reduction="none").mean(-1)


def distill_losses(out: DraftOutput, target_last: torch.Tensor, target_intermed: torch.Tensor,
                   mask: torch.Tensor, lm_head: torch.Tensor, weights: LossWeights,
                   d2t: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The three terms and their weighted sum over the masked tokens of one sequence.

    Args:
        out: the draft's outputs over T' stream tokens (batch 1).
        target_last: [T', H] target last-layer features at the stream positions.
        target_intermed: [T', H] selected intermediate features at the stream positions.
        mask: [T'] bool, tokens that count.
        lm_head: [V, H] the target's (frozen) LM head.
        weights: the λs.
        d2t: the draft's id map, or None.

    Returns:
        {"loss", "kl", "feat", "intermed", "top1"}; "loss" carries the gradient, "top1" is the
        share of masked tokens where the draft's argmax is the target's (no gradient).
    """
    logits = out.logits[0][mask]  # [n, V_d]
    with torch.no_grad():
        target_logits = F.linear(target_last[mask].to(lm_head.dtype), lm_head)  # [n, V]
    kl = kl_per_token(target_logits, logits, d2t).mean()
    feat = feature_loss(out.features[0][mask], target_last[mask]).mean()
    intermed = feature_loss(out.early[0][mask], target_intermed[mask]).mean()
    with torch.no_grad():
        want = target_logits.argmax(-1) if d2t is None else target_logits.index_select(-1, d2t).argmax(-1)
        top1 = (logits.argmax(-1) == want).float().mean()
    loss = weights.kl * kl + weights.feat * feat + weights.intermed * intermed
    return {"loss": loss, "kl": kl.detach(), "feat": feat.detach(), "intermed": intermed.detach(), "top1": top1}
