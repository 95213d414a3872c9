"""Every family against its own HF model: prompt building, prefill + decode parity, tree = chains,
commit then continue = chain, fixed cache buffers, attention readouts."""

from __future__ import annotations

import math

import pytest
import torch

from dream_s_edge.targets import SUPPORTED_FAMILIES
from runtime.errors import SpecMismatchError

ATOL = 1e-4
EXTRA = [21, 40, 57, 33, 64]  # text token ids appended after the prompt (all below every tiny vocab)
# A tree of 8 nodes below the root (node 0): branches 0-1-2-3, 0-4-5, 0-6-7.
PARENTS = [-1, 0, 1, 2, 0, 4, 0, 6]
TREE_TOKENS = [21, 40, 57, 33, 45, 52, 61, 38]
BRANCHES = [[0, 1, 2, 3], [0, 4, 5], [0, 6, 7]]


def tree_mask(parents: list[int]) -> torch.Tensor:
    """[N, N] bool: row j True at j's ancestors and j itself."""
    mask = torch.zeros(len(parents), len(parents), dtype=torch.bool)
    for j in range(len(parents)):
        node = j
        while node >= 0:
            mask[j, node] = True
            node = parents[node]
    return mask


def prefill(target, inputs, cache, **kwargs):
    """Runs the prompt at slot 0 and commits it; returns (StepOutput, rope delta)."""
    embeds = target.embed(inputs["input_ids"], target.encode_images(**inputs))
    positions, delta = target.prompt_positions(inputs)
    out = target.decoder_step(embeds, positions, cache, 0, prefill_inputs=inputs, **kwargs)
    cache.advance(0, inputs["input_ids"].shape[1])
    return out, delta


def run_tokens(target, cache, tokens, delta, start, depths=None, mask=None, **kwargs):
    """Runs token ids [n] at slots [start, start + n) at positions start + depth (no commit)."""
    ids = torch.tensor([tokens])
    depths = torch.arange(len(tokens)) if depths is None else depths
    positions = target.positions_for((start + depths)[None], delta)
    return target.decoder_step(target.embed(ids), positions, cache, start, mask, **kwargs)


@pytest.fixture(scope="module", params=SUPPORTED_FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def prompt(targets, family, image):
    target = targets(family)
    return target, target.build_inputs(image, "What is it?")


def test_build_inputs_has_image_tokens_and_pixels(prompt):
    target, inputs = prompt
    ids = inputs["input_ids"]
    assert ids.ndim == 2 and ids.shape[0] == 1
    num_image_tokens = int((ids == target.spec.image_token_id).sum())
    image_embeds = target.encode_images(**inputs)
    assert image_embeds.shape == (1, num_image_tokens, target.spec.hidden_size)
    assert num_image_tokens > 0
    if target.spec.uses_mrope:
        assert torch.equal(inputs["mm_token_type_ids"][0].bool(), ids[0] == target.spec.image_token_id)
    text_only = target.build_inputs(None, "Hi")
    assert not (text_only["input_ids"] == target.spec.image_token_id).any()


def test_prefill_then_decode_matches_hf_forward(prompt):
    target, inputs = prompt
    cache = target.new_cache(96)
    out, delta = prefill(target, inputs, cache)
    logits = [out.logits[:, -1]]
    for token in EXTRA:
        step = run_tokens(target, cache, [token], delta, cache.length)
        cache.advance(cache.length, 1)
        logits.append(step.logits[:, -1])
    full = dict(inputs)
    extra = torch.tensor([EXTRA])
    full["input_ids"] = torch.cat([inputs["input_ids"], extra], 1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in full:
            full[key] = torch.cat([inputs[key], torch.zeros_like(extra).to(inputs[key].dtype)], 1)
    with torch.no_grad():
        reference = target.model(**full).logits  # [1, T + E, V]
    length = inputs["input_ids"].shape[1]
    torch.testing.assert_close(out.logits, reference[:, :length], atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.stack(logits, 1), reference[:, length - 1 :], atol=ATOL, rtol=0)


def test_tree_branches_match_chains(prompt):
    target, inputs = prompt
    cache = target.new_cache(64)
    _, delta = prefill(target, inputs, cache)
    start = cache.length
    mask = tree_mask(PARENTS)
    tree = run_tokens(target, cache, TREE_TOKENS, delta, start, mask.sum(-1) - 1, mask)
    assert cache.length == start  # a verify step commits nothing
    for branch in BRANCHES:
        chain = run_tokens(target, cache, [TREE_TOKENS[i] for i in branch], delta, start)
        torch.testing.assert_close(tree.logits[:, branch], chain.logits, atol=ATOL, rtol=0)


def test_commit_then_continue_matches_chain(prompt):
    target, inputs = prompt
    cache = target.new_cache(64)
    _, delta = prefill(target, inputs, cache)
    pointers = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
    start = cache.length
    mask = tree_mask(PARENTS)
    run_tokens(target, cache, TREE_TOKENS, delta, start, mask.sum(-1) - 1, mask)
    accepted = BRANCHES[1]
    cache.commit(start, torch.tensor(accepted))
    assert cache.length == start + len(accepted)
    after = run_tokens(target, cache, [29, 70], delta, cache.length)
    assert [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers] == pointers

    reference_cache = target.new_cache(64)
    prefill(target, inputs, reference_cache)
    chain = run_tokens(target, reference_cache, [TREE_TOKENS[i] for i in accepted] + [29, 70], delta, start)
    torch.testing.assert_close(after.logits, chain.logits[:, len(accepted) :], atol=ATOL, rtol=0)


def test_hidden_states_follow_hf_indexing(prompt):
    target, inputs = prompt
    cache = target.new_cache(64)
    last = target.spec.num_layers
    out, _ = prefill(target, inputs, cache, output_layers=(0, 1, last))
    embeds = target.embed(inputs["input_ids"], target.encode_images(**inputs))
    torch.testing.assert_close(out.hidden_states[0], embeds)
    torch.testing.assert_close(target.model.lm_head(out.hidden_states[last]), out.logits)
    assert out.hidden_states[1].shape == embeds.shape


def test_attention_readouts_with_eager(targets, family, image):
    target = targets(family, "eager")
    inputs = target.build_inputs(image, "What is it?")
    cache = target.new_cache(64)
    out, delta = prefill(target, inputs, cache, output_entropy=True, output_visual_attention=True)
    length = inputs["input_ids"].shape[1]
    entropy = out.attention_entropy
    assert entropy.shape == (target.spec.num_layers, 1, length)
    assert torch.isfinite(entropy).all()
    assert entropy.min() >= -1e-6 and entropy.max() <= math.log(length) + 1e-5
    assert out.visual_attention.shape == (1, length)
    torch.testing.assert_close(out.visual_attention.sum(), torch.tensor(float(length)), atol=1e-3, rtol=0)

    mask = tree_mask(PARENTS)
    tree = run_tokens(target, cache, TREE_TOKENS, delta, length, mask.sum(-1) - 1, mask, output_entropy=True)
    assert tree.attention_entropy.shape == (target.spec.num_layers, 1, len(PARENTS))
    assert tree.attention_entropy.max() <= math.log(length + len(PARENTS)) + 1e-5


def test_readouts_need_eager(prompt):
    target, inputs = prompt
    with pytest.raises(SpecMismatchError, match="eager"):
        prefill(target, inputs, target.new_cache(64), output_entropy=True)
