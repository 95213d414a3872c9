"""The sandwich rule (seeded, pure) and one phase-2 step on a tiny supernet: every sampled
sub-network's loss reaches the shared tensors, and a few steps lower the losses."""

from __future__ import annotations

import numpy as np
import torch
from test_supernet import H_T, LAYERS, SPACE, VOCAB, _one_thread, tiny_supernet  # noqa: F401

from dream_s_edge.distill.losses import LossWeights
from search.sandwich import SupernetBatch, sandwich_choices, sandwich_step, teacher_kl


def test_sandwich_rule_is_seeded_and_ordered() -> None:
    a = sandwich_choices(SPACE, np.random.default_rng(3), random=2)
    b = sandwich_choices(SPACE, np.random.default_rng(3), random=2)
    assert a == b and len(a) == 4
    branch = a[0].interaction
    assert a[0] == SPACE.largest(branch) and a[1] == SPACE.smallest(branch)
    assert all(c.interaction == branch and c in SPACE.choices() for c in a[2:])
    seen = {sandwich_choices(SPACE, np.random.default_rng(s))[0].interaction for s in range(20)}
    assert seen == {"cross_attention", "concat"}
    draws = {c for s in range(30) for c in sandwich_choices(SPACE, np.random.default_rng(s), random=3)[2:]}
    assert len(draws) > 30  # random draws cover the grid, not a few fixed points


def _batch(T: int = 9, seed: int = 0) -> SupernetBatch:
    g = torch.Generator().manual_seed(seed)
    feats = {layer: torch.randn(1, T, H_T, generator=g, dtype=torch.float64) for layer in SPACE.feature_layers}
    return SupernetBatch(embeds=torch.randn(1, T, H_T, generator=g, dtype=torch.float64), features=feats,
                         positions=torch.arange(T), last=feats[LAYERS][0], intermed=feats[2][0],
                         mask=torch.arange(T) >= 2)


def test_teacher_kl_maps_vocabularies() -> None:
    g = torch.Generator().manual_seed(0)
    full = torch.randn(3, VOCAB, generator=g, dtype=torch.float64)
    sub = torch.tensor([1, 5, 9])
    assert torch.allclose(teacher_kl(full, None, full[:, sub], sub), torch.zeros(3), atol=1e-6)
    mid = torch.tensor([1, 3, 5, 7, 9])
    assert torch.allclose(teacher_kl(full[:, mid], mid, full[:, sub], sub), torch.zeros(3),
                          atol=1e-6)


def test_one_sandwich_step_sends_gradient_from_every_subnet() -> None:
    net = tiny_supernet()
    net.reorder_by_importance()
    batch = _batch()
    choices = sandwich_choices(SPACE, np.random.default_rng(0), random=2)
    for choice in choices:  # each sub-network alone reaches the shared tensors
        net.zero_grad(set_to_none=True)
        sandwich_step(net, batch, [choices[0], choice] if choice != choices[0] else [choice], LossWeights())
        branch = net.branches[choice.interaction]
        kept = round(4 * choice.head_ratio) * 4
        assert branch.blocks[0].attn.q_proj.weight.grad[:kept].abs().sum() > 0
    net.zero_grad(set_to_none=True)
    metrics = sandwich_step(net, batch, choices, LossWeights(), kd_weight=0.5)
    assert len(metrics) == len(choices) and metrics[0]["kd"] == 0.0 and metrics[1]["kd"] > 0
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    first = sum(m["loss"] for m in metrics)
    for _ in range(15):
        optimizer.step()
        net.zero_grad(set_to_none=True)
        last = sum(m["loss"] for m in sandwich_step(net, batch, choices, LossWeights(), kd_weight=0.5))
    assert last < first
