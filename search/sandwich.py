"""Phase-2 supernet training: the sandwich rule, its loss, and one gradient-accumulating step.

Place in the data flow: a sequence of the distillation data, as each sampled sub-network sees it
(its injection layer and visual-token compression) -> `sandwich_loss` -> backward -> gradients on
the supernet's shared tensors -> the caller's optimizer step. `dream-s-edge train --supernet`
(search/supernet_train.py) calls `sandwich_loss` under DDP; `sandwich_step` is the same for one
`SupernetBatch` without the trainer.

Each step trains the largest sub-network, the smallest and `random` random ones (the sandwich rule,
an improvement on OFA's progressive shrinking: the extremes bound the space, the random ones cover
it). Every sub-network is distilled from the target with the DREAM losses; the smaller ones are also
distilled from the largest's logits (in-place distillation, the teacher detached)::

    loss(largest) = distill_losses(largest)
    loss(s)       = distill_losses(s) + λ_kd · mean_t KL(q_largest(t) ‖ q_s(t))   over s's vocabulary

`distill_losses` here is the ordinary draft trainer's loss of a sequence (`sequence_losses`: KL to
the target, feature and intermediate-feature terms, over the training-time-test steps when unrolled).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dream_s_edge.distill.dataset import TrainingExample
from dream_s_edge.distill.losses import LossWeights, kl_per_token
from dream_s_edge.distill.trainer import sequence_losses
from search.supernet import SearchSpace, SubnetChoice, Supernet


def sandwich_choices(space: SearchSpace, rng: np.random.Generator, random: int = 1) -> list[SubnetChoice]:
    """The sub-networks of one step: largest, smallest, then `random` draws, all in one branch.

    The branch is drawn first (uniformly), so every branch is trained and the smaller networks are
    distilled from the largest of their own branch. Random draws are uniform over the branch's grid.

    Args:
        space: the search space.
        rng: a seeded generator (the only source of randomness).
        random: random sub-networks after the extremes.

    Returns:
        [largest, smallest, random...] SubnetChoices.
    """
    branch = space.interactions[int(rng.integers(len(space.interactions)))]
    grid = [c for c in space.choices() if c.interaction == branch]
    draws = [grid[int(i)] for i in rng.integers(len(grid), size=random)]
    return [space.largest(branch), space.smallest(branch), *draws]


@dataclass
class SupernetBatch:
    """One sequence of distillation data for the supernet (batch 1).

    Attributes:
        embeds: [1, T, H_t] the draft's input stream.
        features: injection layer (HF index) -> [1, M, H_t] the target's hidden state there.
        positions: [T] int64 absolute positions of the stream.
        last: [T, H_t] target last-layer features at the stream positions (feature loss, KL).
        intermed: [T, H_t] the intermediate feature the early block is distilled to.
        mask: [T] bool, tokens that count.
    """

    embeds: torch.Tensor
    features: dict[int, torch.Tensor]
    positions: torch.Tensor
    last: torch.Tensor
    intermed: torch.Tensor
    mask: torch.Tensor


def teacher_kl(teacher_logits: torch.Tensor, teacher_d2t: torch.Tensor | None, student_logits: torch.Tensor,
               student_d2t: torch.Tensor | None) -> torch.Tensor:
    """[n] KL(q_teacher ‖ q_student) over the student's vocabulary (a subset of the teacher's).

    Args:
        teacher_logits: [n, V_t] the largest network's logits (detached by the caller).
        teacher_d2t: [V_t] its ascending target ids, or None (full vocabulary).
        student_logits: [n, V_s].
        student_d2t: [V_s] ascending target ids, or None (full vocabulary).
    """
    if student_d2t is None:
        index = None
    elif teacher_d2t is None:
        index = student_d2t
    else:
        index = torch.searchsorted(teacher_d2t, student_d2t)
        assert torch.equal(teacher_d2t[index], student_d2t), "the student's vocabulary is not the teacher's subset"
    return kl_per_token(teacher_logits, student_logits, index)


def sandwich_loss(supernet: Supernet, batch: list[tuple[SubnetChoice, TrainingExample]], weights: LossWeights,
                  kd_weight: float = 1.0, ttt_steps: int = 0,
                  ttt_decay: float = 0.8) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """The summed loss of one step's sub-networks on one sequence (no backward).

    Args:
        supernet: the supernet (train mode).
        batch: (choice, the sequence as that choice reads it) pairs; the first choice is the teacher
            (the largest). Every example masks the same answer tokens (VTC keeps every text position).
        weights: the λs of the DREAM losses.
        kd_weight: λ_kd of the distillation from the first choice.
        ttt_steps: training-time-test steps (as in ordinary draft training).
        ttt_decay: loss weight of unrolled step k is decay**k.

    Returns:
        (the summed loss with gradient, one dict of detached metric tensors per choice: "loss",
        "kd", "kl", "feat", "intermed", "top1", "top1_k<k>"...).
    """
    lm_head = next(iter(supernet.branches.values())).lm_head_weight
    teacher = None
    total = None
    metrics = []
    for i, (choice, ex) in enumerate(batch):
        outs = supernet.unrolled(choice, ex.embeds, ex.features, ex.positions, ttt_steps)
        d2t = supernet.d2t(choice)
        terms = sequence_losses(outs, ex, lm_head, d2t, weights, ttt_decay)
        logits = outs[0].logits[0][ex.mask]  # [n, V_d]
        kd = torch.zeros((), dtype=logits.dtype, device=logits.device)
        if i == 0:
            teacher = (logits.detach(), d2t)
        elif logits.shape[0]:
            assert logits.shape[0] == teacher[0].shape[0], "sub-networks see different answer tokens"
            kd = teacher_kl(teacher[0], teacher[1], logits, d2t).mean()
        loss = terms["loss"] + kd_weight * kd
        total = loss if total is None else total + loss
        metrics.append({**{k: v.detach() for k, v in terms.items()}, "loss": loss.detach(), "kd": kd.detach()})
    return total, metrics


def sandwich_step(supernet: Supernet, batch: SupernetBatch, choices: list[SubnetChoice], weights: LossWeights,
                  kd_weight: float = 1.0) -> list[dict[str, float]]:
    """Accumulates the gradients of the sub-networks' losses into the supernet (no optimizer step).

    Args:
        supernet: the supernet (train mode).
        batch: one sequence.
        choices: [largest, others...] from `sandwich_choices`; the first is the teacher.
        weights: the λs of the DREAM losses.
        kd_weight: λ_kd of the distillation from the largest.

    Returns:
        One dict of float metrics per choice ("loss", "kl", "feat", "intermed", "top1", "kd").
    """
    answer = torch.nonzero(batch.mask)
    start = int(batch.positions[answer[0]]) + 1 if answer.numel() else int(batch.positions[-1]) + 1
    examples = [(c, TrainingExample(batch.embeds, batch.features[c.feature_layer], batch.positions, batch.last,
                                    batch.intermed, batch.mask, start)) for c in choices]
    loss, metrics = sandwich_loss(supernet, examples, weights, kd_weight)
    loss.backward()
    return [{name: float(m[name]) for name in ("loss", "kd", "kl", "feat", "intermed", "top1")} for m in metrics]
