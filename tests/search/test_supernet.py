"""The DREAM-S supernet: sliced sub-networks equal their extracted standalone drafts, reordering by
importance keeps the largest network's function, and every sub-network's loss reaches the shared tensors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dream_s_edge.draft.model import DreamDraft
from dream_s_edge.draft.spec import DraftSpec, DraftSpecError
from search.supernet import (
    SearchSpace,
    SubnetChoice,
    Supernet,
    build_subnet,
    extract_subnet,
    head_importance,
    param_count,
)

H_T, VOCAB, LAYERS = 16, 40, 4


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_supernet(seed: int = 0, interactions=("cross_attention", "concat"), kv_heads: int = 4) -> Supernet:
    torch.manual_seed(seed)
    embed = torch.randn(VOCAB, H_T, dtype=torch.float64)
    head = torch.randn(VOCAB, H_T, dtype=torch.float64)
    spec = DraftSpec(target_hidden_size=H_T, target_vocab_size=VOCAB, target_num_layers=LAYERS, num_layers=3,
                     hidden_size=16, ffn_size=32, num_heads=4, num_kv_heads=kv_heads)
    net = Supernet(spec, embed, head, interactions, token_counts=torch.arange(VOCAB).flip(0)).double()
    with torch.no_grad():  # leave the zero-initialised gates and null values: every path must matter
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def _inputs(net: Supernet, T: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (1, T), generator=g)
    embeds = net.branches["cross_attention"].embed(ids)
    features = torch.randn(1, T, H_T, generator=g, dtype=torch.float64)
    return embeds, features


SPACE = SearchSpace.for_target(LAYERS, interactions=("cross_attention", "concat"), num_layers=(1, 2, 3),
                               ffn_ratios=(0.25, 0.5, 1.0), draft_vocab_sizes=(None, 12))


def test_space_grid_and_extremes() -> None:
    assert SPACE.feature_layers == (1, 2, 3, 4)
    assert len(SPACE.choices()) == 2 * 3 * 4 * 3 * 4 * 1 * 2
    assert SPACE.largest("concat") == SubnetChoice("concat", 3, 1.0, 1.0, 4, 1.0, None)
    assert SPACE.smallest() == SubnetChoice("cross_attention", 1, 0.25, 0.25, 4, 1.0, 12)


@pytest.mark.parametrize("choice", [SPACE.largest(), SPACE.smallest("concat"),
                                    SubnetChoice("cross_attention", 2, 0.75, 0.5, 2, 0.5, 12),
                                    SubnetChoice("concat", 3, 0.5, 1.0, 3, 1.0, None)])
def test_extracted_subnet_equals_sliced_forward(choice) -> None:
    net = tiny_supernet()
    net.reorder_by_importance()
    embeds, features = _inputs(net)
    sliced = net(choice, embeds, features)
    draft = build_subnet(net, choice)
    alone = draft(embeds, features)
    assert draft.spec.num_layers == choice.num_layers and draft.spec.head_dim == 4
    assert draft.spec.num_heads == round(4 * choice.head_ratio)
    assert alone.logits.shape[-1] == (choice.draft_vocab_size or VOCAB)
    for name in ("logits", "features", "hidden", "early"):
        diff = (getattr(sliced, name) - getattr(alone, name)).abs().max().item()
        assert diff <= 1e-5, (name, diff)
    # the extracted spec round-trips and loads into a fresh draft
    spec, state = extract_subnet(net, choice)
    again = DreamDraft(DraftSpec.from_dict(spec.to_dict()), net.branches[choice.interaction].embed_weight,
                       net.branches[choice.interaction].lm_head_weight, state.get("d2t")).double()
    again.load_state_dict(state)
    assert torch.equal(again(embeds, features).logits, alone.logits)


def test_reordering_keeps_the_largest_network_and_puts_important_heads_first() -> None:
    net = tiny_supernet()
    embeds, features = _inputs(net)
    before = net(SPACE.largest(), embeds, features).logits
    net.reorder_by_importance()
    after = net(SPACE.largest(), embeds, features).logits
    assert (before - after).abs().max().item() < 1e-10
    for block in net.branches["cross_attention"].blocks:
        scores = head_importance(block.attn, 4)
        assert torch.all(scores[:-1] >= scores[1:])


def test_every_subnet_loss_reaches_the_shared_tensors() -> None:
    net = tiny_supernet()
    embeds, features = _inputs(net)
    for choice in (SPACE.largest(), SPACE.smallest(), SPACE.smallest("concat"),
                   SubnetChoice("cross_attention", 2, 0.5, 0.5, 3, 1.0, 12)):
        net.zero_grad(set_to_none=True)
        net(choice, embeds, features).logits.square().mean().backward()
        branch = net.branches[choice.interaction]
        block = branch.blocks[0]
        kept = round(4 * choice.head_ratio) * 4
        q_grad = block.attn.q_proj.weight.grad
        assert q_grad is not None and q_grad[:kept].abs().sum() > 0, choice
        assert q_grad[kept:].abs().sum() == 0  # pruned heads are not part of this sub-network
        ffn = round(32 * choice.ffn_ratio)
        assert block.mlp.up_proj.weight.grad[:ffn].abs().sum() > 0
        if branch.cross is not None:
            assert branch.cross.k_proj.weight.grad[:kept].abs().sum() > 0
        assert branch.blocks[choice.num_layers - 1].mlp.down_proj.weight.grad.abs().sum() > 0
        if choice.num_layers < 3:
            assert branch.blocks[2].mlp.down_proj.weight.grad is None
        # the gradient lands in the supernet's own tensor (a view of it, never a copy)
        assert net.sliced_tensors(choice)["blocks.0.attn.q_proj.weight"].data_ptr() == block.attn.q_proj.weight.data_ptr()


def test_choices_that_do_not_fit_are_refused() -> None:
    net = tiny_supernet(kv_heads=2)
    with pytest.raises(DraftSpecError, match="whole KV groups"):
        net.subnet_spec(SubnetChoice(head_ratio=0.25))
    with pytest.raises(DraftSpecError, match="num_layers"):
        net.subnet_spec(SubnetChoice(num_layers=4))
    small = net.subnet_spec(SubnetChoice(num_layers=1, head_ratio=0.5, ffn_ratio=0.5))
    assert param_count(small) < param_count(net.subnet_spec(SubnetChoice(num_layers=3)))
    assert dataclasses.replace(small, attention_head_dim=0).to_dict().get("attention_head_dim") is None


def test_checkpoint_round_trip(tmp_path) -> None:
    from search.supernet import load_supernet, save_supernet

    net = tiny_supernet()
    net.reorder_by_importance()
    branch = net.branches["cross_attention"]
    again = load_supernet(save_supernet(net, tmp_path / "sn"), branch.embed_weight, branch.lm_head_weight)
    embeds, features = _inputs(net)
    for choice in (SPACE.largest(), SPACE.smallest("concat")):
        assert torch.equal(net(choice, embeds, features).logits, again(choice, embeds, features).logits)
    with pytest.raises(DraftSpecError, match="not a supernet"):
        load_supernet(tmp_path, branch.embed_weight, branch.lm_head_weight)


def test_taylor_importance_puts_a_dead_head_last() -> None:
    """A KV group whose output columns are zero gets zero Taylor importance and moves to the end."""
    net = tiny_supernet()
    attn = net.branches["cross_attention"].blocks[0].attn
    with torch.no_grad():
        attn.o_proj.weight[:, :4].zero_()  # head 0 (its own KV group) contributes nothing
        dead_q = attn.q_proj.weight[:4].clone()
    embeds, features = _inputs(net)
    before = net(SPACE.largest(), embeds, features).logits.detach()
    for _ in range(2):
        net.zero_grad(set_to_none=True)
        net(SPACE.largest(), embeds, features).logits.square().mean().backward()
        net.accumulate_taylor()
    scores = net._taylor["cross_attention.blocks.0.attn"]
    assert scores[0] == 0 and (scores[1:] > 0).all()
    net.reorder_by_importance("taylor")
    assert torch.equal(attn.q_proj.weight[-4:], dead_q) and not net._taylor
    assert (net(SPACE.largest(), embeds, features).logits - before).abs().max() < 1e-10
