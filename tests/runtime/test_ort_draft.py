"""OrtDraftRunner equals TorchDraftRunner step by step, and ORT speculative equals ORT greedy AR."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.decode import autoregressive_generate, speculative_generate
from runtime.manifest import Manifest
from runtime.ort_draft import OrtDraftRunner
from runtime.ort_target import OrtTargetRunner
from runtime.preprocess import PromptBuilder


def _export_preset(adapter, preset: str, tree, out):
    """Saves an untrained draft of `preset` and exports target + draft into `out`; returns the model."""
    from dream_s_edge.draft.checkpoint import save_draft
    from dream_s_edge.runners.draft_factory import untrained_draft
    from export.pipeline import ExportConfig, export_artifacts

    model = untrained_draft(adapter, preset=preset, seed=1)
    for p in model.parameters():  # non-zero gates, so the cross-attention block matters
        if p.ndim == 0:
            p.data.fill_(0.5)
    save_draft(out / "draft", model, model.spec)
    export_artifacts(ExportConfig(out=out / "art", max_context=64, draft=str(out / "draft"), tree=tree), adapter=adapter)
    return model


@pytest.mark.parametrize("preset", ["dream-default", "eagle"])
def test_draft_steps_match_torch(exported_tiny, tiny_tree, image, tmp_path, preset) -> None:
    from dream_s_edge.generation import build_prompt
    from dream_s_edge.runners.draft_factory import draft_runner, load_draft_model
    from dream_s_edge.runners.target_torch import TorchTargetRunner
    from runtime.runner import RunnerLimits

    adapter = exported_tiny[1]
    _export_preset(adapter, preset, tiny_tree, tmp_path)
    model = load_draft_model(adapter, tmp_path / "draft")
    manifest = Manifest.load(tmp_path / "art")
    target = TorchTargetRunner(adapter, RunnerLimits(64, 10), feature_layers=model.spec.feature_layers)
    ref = draft_runner(adapter, model, 64, tiny_tree)
    got = OrtDraftRunner(manifest, np.load(manifest.path("embeddings")), threads=1)
    result = target.prefill(build_prompt(adapter, image, "What is it?", 64))
    # the graph's outputs cover the last head_rows tokens: the prefill chain is longer, so it is cut
    assert manifest["draft"]["head_rows"] == manifest["draft"]["scratch_slots"] < result.features.shape[0]
    steps = [
        lambda r: r.prefill(result, build_prompt(adapter, image, "What is it?", 64).input_ids, 7, 3),
        lambda r: r.tree_step(np.array([5, 6]), np.full(2, r.length), np.array([0, 1]), np.zeros((2, 2), bool), 3),
        lambda r: r.tree_step(np.array([8]), np.array([r.length + 1]), np.array([2]),
                              np.array([[True, False, True]]), 3),
        lambda r: r.advance(np.array([5, 9]), result.features[:2], 3),
        lambda r: r.tree_step(np.array([4, 3, 2]), np.full(3, r.length), np.array([0, 1, 2]),
                              np.zeros((3, 3), bool), 3),
    ]
    for step in steps:
        a, b = step(ref), step(got)
        np.testing.assert_array_equal(b.token_ids, a.token_ids)
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-4)


def test_speculative_equals_autoregressive(exported_tiny, tiny_tree, image) -> None:
    from dream_s_edge.generation import GenerationConfig, TreeOptions, build_prompt, generate

    folder, adapter = exported_tiny
    manifest = Manifest.load(folder)
    prompts = PromptBuilder(folder, manifest["processor"])
    target = OrtTargetRunner(manifest, threads=1)
    draft = OrtDraftRunner(manifest, target.embeddings, threads=1)
    options = TreeOptions(kind="dynamic", top_k=3, depth=4, node_budget=10)
    for question in ["What is it?", "hi"]:
        eos = adapter.spec.eos_token_ids
        spec = speculative_generate(target, draft, prompts.build(image, question), tiny_tree, max_new_tokens=24,
                                    eos_ids=eos)
        ar = autoregressive_generate(target, prompts.build(image, question), max_new_tokens=24, eos_ids=eos)
        np.testing.assert_array_equal(spec.tokens, ar.tokens)
        torch_spec = generate(adapter, build_prompt(adapter, image, question, 64), GenerationConfig(24, max_context=64),
                              tree=options, draft="untrained")
        np.testing.assert_array_equal(spec.tokens, torch_spec.tokens)
        assert spec.metrics.accept_counts == torch_spec.metrics.accept_counts


def test_draft_prefill_keeps_the_head_the_target_kept(exported_tiny, tiny_tree, image) -> None:
    """After one prompt, the next one's draft prefill runs only past the head the target reused, and
    proposes what a fresh draft proposes; the next tree level agrees too (the kept K/V are read)."""
    folder, _ = exported_tiny
    manifest = Manifest.load(folder)
    prompts = PromptBuilder(folder, manifest["processor"])
    first, second = prompts.build(image, "What is it?"), prompts.build(image, "Describe the colours.")
    pairs = []
    for warm in (True, False):
        target = OrtTargetRunner(manifest, threads=1)
        draft = OrtDraftRunner(manifest, target.embeddings, threads=1)
        if warm:
            result = target.prefill(first)
            draft.prefill(result, first.input_ids, int(result.logits.argmax()), 3)
        result = target.prefill(second)
        assert (result.reused > 0) == warm
        proposal = draft.prefill(result, second.input_ids, int(result.logits.argmax()), 3)
        pos = draft.length
        level = draft.tree_step(proposal.token_ids[0, :2], np.array([pos, pos]), np.array([0, 1]),
                                np.eye(2, dtype=bool), 3)
        pairs.append((proposal, level))
    (warm_root, warm_level), (cold_root, cold_level) = pairs
    np.testing.assert_array_equal(warm_root.token_ids, cold_root.token_ids)
    np.testing.assert_allclose(warm_root.logprobs, cold_root.logprobs, atol=1e-5)
    np.testing.assert_array_equal(warm_level.token_ids, cold_level.token_ids)
    np.testing.assert_allclose(warm_level.logprobs, cold_level.logprobs, atol=1e-5)


def test_chains_run_on_the_last_row_graph_with_the_same_results(exported_tiny, image) -> None:
    """Prefill and advance run on draft_chain (outputs for the last token only) and propose exactly
    what draft_step proposes for the same chains."""
    folder, _ = exported_tiny
    manifest = Manifest.load(folder)
    assert manifest.has("draft_chain") and manifest["parity"]["draft_chain"]["passed"]
    prompt = PromptBuilder(folder, manifest["processor"]).build(image, "What is it?")
    target = OrtTargetRunner(manifest, threads=1)
    result = target.prefill(prompt)
    root = int(result.logits.argmax())
    proposals = []
    for chain in (True, False):
        draft = OrtDraftRunner(manifest, target.embeddings, threads=1)
        assert draft.chain_step is not None
        if not chain:
            draft.chain_step = None  # every call on draft_step
        first = draft.prefill(result, prompt.input_ids, root, 3)
        tokens = np.array([int(first.token_ids[0, 0]), 5])
        feats = np.random.default_rng(0).standard_normal((2, result.features.shape[1])).astype(np.float32)
        proposals.append((first, draft.advance(tokens, feats, 3)))
    for with_chain, plain in zip(*proposals, strict=True):
        assert with_chain.token_ids.shape == plain.token_ids.shape == (1, 3)
        np.testing.assert_array_equal(with_chain.token_ids, plain.token_ids)
        np.testing.assert_allclose(with_chain.logprobs, plain.logprobs, atol=1e-5)
