"""Tests for dream_s_edge/runners/target_torch.py: buffers are allocated once and keep their identity."""

import torch

from dream_s_edge.generation import GenerationConfig, TreeOptions, build_prompt, speculative_runners
from runtime.decode import speculative_generate


def _pointers(target, draft):
    """Data pointers of every preallocated buffer of both runners."""
    target_ptrs = [t.data_ptr() for layer in target.cache.layers for t in (layer.keys, layer.values)]
    draft_ptrs = [t.data_ptr() for pair in draft._cache for t in pair]
    if draft._cross_kv is not None:
        draft_ptrs += [t.data_ptr() for t in draft._cross_kv]
    return target_ptrs + draft_ptrs


def test_caches_keep_identity_over_whole_generations(targets, image):
    adapter = targets("smolvlm")
    config = GenerationConfig(max_new_tokens=12, max_context=256)
    spec = TreeOptions(kind="dynamic", top_k=3, depth=3, node_budget=8).spec()
    target, draft = speculative_runners(adapter, "untrained", config.max_context, spec)
    before = _pointers(target, draft)
    for question in ["What is this?", "Describe the colours in this picture, please.", "Hi"]:
        prompt = build_prompt(adapter, image, question, config.max_context)
        result = speculative_generate(target, draft, prompt, spec, max_new_tokens=config.max_new_tokens)
        assert len(result.tokens) > 0
        assert _pointers(target, draft) == before
    assert target.length > 0 and all(isinstance(p, int) for p in before)


def test_verify_of_a_branch_matches_its_chain(targets):
    """verify() with a two-branch tree equals running each branch alone after the same prefix."""
    import numpy as np

    from dream_s_edge.runners.target_torch import TorchTargetRunner
    from runtime.runner import Prompt, RunnerLimits

    adapter = targets("smolvlm")
    runner = TorchTargetRunner(adapter, RunnerLimits(64, 8))
    prompt = Prompt(input_ids=np.array([5, 9, 14, 20, 33], dtype=np.int64))
    runner.prefill(prompt)
    tokens = np.array([40, 41, 42, 43, 44])  # root 40; branch A: 41 -> 42; branch B: 43 -> 44
    parents = [-1, 0, 1, 0, 3]
    depth = np.array([0, 1, 2, 1, 2])
    mask = np.eye(5, dtype=bool)
    for j, p in enumerate(parents):
        while p >= 0:
            mask[j, p] = True
            p = parents[p]
    tree = runner.verify(tokens, runner.length + depth, mask).logits
    for branch in ([0, 1, 2], [0, 3, 4]):
        runner.prefill(prompt)
        chain = runner.verify(tokens[branch], runner.length + np.arange(3), np.tril(np.ones((3, 3), bool))).logits
        assert np.abs(chain - tree[branch]).max() < 1e-4
    assert torch.is_tensor(runner.cache.layers[0].keys)
