"""The supernet strategy's pieces on a tiny float64 supernet: every sampled sub-network's loss (the
trainer's step module, training-time test included) sends gradient into the shared supernet tensors;
the phase switch permutes the optimizer's moments with the weights; the training space's defaults."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_supernet import H_T, SPACE, _one_thread, tiny_supernet  # noqa: F401

from dream_s_edge.distill.dataset import TrainingExample
from dream_s_edge.distill.losses import LossWeights
from dream_s_edge.draft.spec import DraftSpec
from runtime.errors import TrainingError
from search.sandwich import sandwich_choices
from search.supernet import SubnetChoice
from search.supernet_train import SupernetOptions, SupernetStep, describe, training_space

T = 9


def _example(layer: int, seed: int = 0) -> TrainingExample:
    """A synthetic sequence as a sub-network reading `layer` sees it (answer from position 3)."""
    g = torch.Generator().manual_seed(seed)
    feats = {i: torch.randn(1, T, H_T, generator=g, dtype=torch.float64) for i in SPACE.feature_layers}
    embeds = torch.randn(1, T, H_T, generator=g, dtype=torch.float64)
    return TrainingExample(embeds=embeds, features=feats[layer], positions=torch.arange(T), last=feats[4][0],
                           intermed=feats[2][0], mask=torch.arange(T) >= 2, answer_start=3)


def _shared_grad_checks(net, choice: SubnetChoice, alone: bool = True) -> None:
    """The sub-network's slice of the shared tensors has a gradient (and, alone, only that slice)."""
    branch = net.branches[choice.interaction]
    kept = round(4 * choice.head_ratio) * 4  # query rows: heads x head dim 4
    q = branch.blocks[0].attn.q_proj.weight
    assert q.grad is not None and q.grad[:kept].abs().sum() > 0, choice
    ffn = round(32 * choice.ffn_ratio)
    up = branch.blocks[choice.num_layers - 1].mlp.up_proj.weight
    assert up.grad[:ffn].abs().sum() > 0
    if alone:
        assert q.grad[kept:].abs().sum() == 0 and up.grad[ffn:].abs().sum() == 0
    if branch.cross is not None:
        assert branch.cross.k_proj.weight.grad[:kept].abs().sum() > 0


@pytest.mark.parametrize("ttt_steps", [0, 1])
def test_every_sampled_subnet_sends_gradient_into_the_shared_tensors(ttt_steps: int) -> None:
    net = tiny_supernet(interactions=("cross_attention",))
    net.reorder_by_importance()
    space = dataclasses.replace(SPACE, interactions=("cross_attention",))
    step = SupernetStep(net, LossWeights(), ttt_steps=ttt_steps, ttt_decay=0.8, kd_weight=0.5)
    largest, smallest, rand = sandwich_choices(space, np.random.default_rng(4), random=1)
    assert rand not in (largest, smallest)
    for choice in (largest, smallest, rand):  # each sub-network's own loss, alone
        net.zero_grad(set_to_none=True)
        terms = step([(choice, _example(choice.feature_layer))])
        terms["loss"].backward()
        _shared_grad_checks(net, choice)
        if ttt_steps:
            assert "top1_k1" in terms
    net.zero_grad(set_to_none=True)  # the whole sandwich: roles named, the KD term present
    terms = step([(c, _example(c.feature_layer)) for c in (largest, smallest, rand)])
    assert float(terms["kd"]) == 0 and float(terms["kd_smallest"]) > 0 and float(terms["kd_random1"]) > 0
    total = terms["loss_largest"] + terms["loss_smallest"] + terms["loss_random1"]
    assert torch.allclose(terms["loss"].detach(), total)
    terms["loss"].backward()
    for choice in (largest, smallest, rand):
        _shared_grad_checks(net, choice, alone=False)


def test_kd_gradient_reaches_only_the_student() -> None:
    """The largest network is a detached teacher: its KL term moves the student's slice only."""
    net = tiny_supernet(interactions=("cross_attention",))
    largest, smallest = SPACE.largest("cross_attention"), SPACE.smallest("cross_attention")
    weights = LossWeights(kl=0.0, feat=0.0, intermed=0.0)  # the KD term alone
    step = SupernetStep(net, weights, ttt_steps=0, ttt_decay=0.8, kd_weight=1.0)
    step([(largest, _example(largest.feature_layer)), (smallest, _example(smallest.feature_layer))])["loss"].backward()
    q = net.branches["cross_attention"].blocks[0].attn.q_proj.weight
    kept = round(4 * smallest.head_ratio) * 4
    assert q.grad[:kept].abs().sum() > 0 and q.grad[kept:].abs().sum() == 0


def test_phase_switch_permutes_the_optimizer_moments_with_the_weights() -> None:
    net = tiny_supernet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    step = SupernetStep(net, LossWeights(), ttt_steps=0, ttt_decay=0.8, kd_weight=1.0)
    choice = SPACE.largest("cross_attention")
    for seed in range(3):
        optimizer.zero_grad(set_to_none=True)
        step([(choice, _example(choice.feature_layer, seed))])["loss"].backward()
        net.accumulate_taylor()
        optimizer.step()
    attn = net.branches["cross_attention"].blocks[0].attn
    mlp = net.branches["cross_attention"].blocks[0].mlp
    before = {name: (p.detach().clone(), optimizer.state[p]["exp_avg"].clone(), optimizer.state[p]["exp_avg_sq"].clone())
              for name, p in (("q", attn.q_proj.weight), ("down", mlp.down_proj.weight))}
    net.reorder_by_importance("taylor", optimizer)
    for name, p, dim in (("q", attn.q_proj.weight, 0), ("down", mlp.down_proj.weight, 1)):
        w0, m0, v0 = before[name]
        w1, m1, v1 = p.detach(), optimizer.state[p]["exp_avg"], optimizer.state[p]["exp_avg_sq"]
        rows0, rows1 = (w0, w1) if dim == 0 else (w0.T, w1.T)
        # where each new row (column) came from, found by its weights; the moments must follow
        source = [int(torch.nonzero((rows0 == r).all(1))[0]) for r in rows1]
        assert sorted(source) == list(range(rows0.shape[0])) and source != sorted(source)
        select = torch.tensor(source)
        assert torch.equal(m1, m0.index_select(dim, select)) and torch.equal(v1, v0.index_select(dim, select))


def test_training_space_defaults_and_refusals() -> None:
    spec = DraftSpec(target_hidden_size=H_T, target_vocab_size=40, target_num_layers=6, num_layers=2,
                     hidden_size=24, num_heads=6, num_kv_heads=3, visual_keep_ratio=0.75)
    space = training_space(spec, SupernetOptions(), stored={4, 6})
    assert space.num_layers == (1, 2) and space.head_ratios == pytest.approx((1 / 3, 2 / 3, 1.0))
    assert space.feature_layers == (4, 6) and space.visual_keep_ratios == (0.75, 1.0)
    assert space.largest() == SubnetChoice("cross_attention", 2, 1.0, 1.0, 6, 1.0, None)
    assert describe(space.smallest()) == "cross_attention L1 h0.333333 f0.5 @6 v0.75 Vfull"
    with pytest.raises(TrainingError, match="none of the candidate"):
        training_space(spec, SupernetOptions(injection_layers=2), stored={1})
    with pytest.raises(TrainingError, match="out of range"):
        SupernetOptions(phase1_steps=-1)
    assert SupernetOptions.from_dict({"num_layers": [1, 3], "draft_vocab_sizes": [None, 8]}).num_layers == (1, 3)
