"""OrtTargetRunner and Session on a tiny exported SmolVLM: equal to PyTorch, buffers allocated once."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.decode import autoregressive_generate
from runtime.errors import ImageError, PromptError
from runtime.manifest import Manifest
from runtime.ort_target import OrtTargetRunner
from runtime.preprocess import PromptBuilder

QUESTIONS = ["What is in the picture?", "hi", "Describe it in one line."]


@pytest.fixture(scope="module")
def ort_parts(exported_tiny):
    folder, _ = exported_tiny
    manifest = Manifest.load(folder)
    return manifest, PromptBuilder(folder, manifest["processor"]), OrtTargetRunner(manifest, threads=1)


@pytest.mark.parametrize("with_image", [True, False])
def test_prompt_equals_hf_processor(exported_tiny, ort_parts, image, with_image) -> None:
    from dream_s_edge.generation import build_prompt

    adapter = exported_tiny[1]
    picture = image if with_image else None
    for question in QUESTIONS:
        ref = build_prompt(adapter, picture, question, 64)
        got = ort_parts[1].build(picture, question)
        np.testing.assert_array_equal(got.input_ids, ref.input_ids)
        if with_image:
            np.testing.assert_allclose(got.extras["pixel_values"], ref.extras["pixel_values"][0], atol=1e-6)


@pytest.mark.parametrize("with_image", [True, False])
def test_greedy_ar_equals_torch(exported_tiny, ort_parts, image, with_image) -> None:
    from dream_s_edge.generation import GenerationConfig, build_prompt, generate

    adapter = exported_tiny[1]
    _, prompts, runner = ort_parts
    picture = image if with_image else None
    for i, question in enumerate(QUESTIONS):
        ref = generate(adapter, build_prompt(adapter, picture, question, 64), GenerationConfig(24, max_context=64))
        got = autoregressive_generate(runner, prompts.build(picture, question), max_new_tokens=24,
                                      eos_ids=adapter.spec.eos_token_ids)
        np.testing.assert_array_equal(got.tokens, ref.tokens)
        assert i == 0 or got.metrics.reused_prompt_tokens > 0  # later prompts keep the template head


def test_prefill_and_verify_match_torch(exported_tiny, ort_parts, image) -> None:
    import torch

    from dream_s_edge.generation import build_prompt
    from dream_s_edge.runners.target_torch import TorchTargetRunner
    from runtime.runner import RunnerLimits

    adapter = exported_tiny[1]
    _, prompts, runner = ort_parts
    torch_runner = TorchTargetRunner(adapter, RunnerLimits(64, 10))
    ref = torch_runner.prefill(build_prompt(adapter, image, QUESTIONS[0], 64))
    got = runner.prefill(prompts.build(image, QUESTIONS[0]))
    np.testing.assert_allclose(got.logits, ref.logits, atol=1e-4)
    np.testing.assert_allclose(got.features, ref.features, atol=1e-4)
    tree = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=bool)
    tokens, depth = np.array([5, 9, 7, 11]), tree.sum(1) - 1
    with torch.no_grad():
        ref_v = torch_runner.verify(tokens, torch_runner.length + depth, tree)
    got_v = runner.verify(tokens, runner.length + depth, tree)
    np.testing.assert_allclose(got_v.logits, ref_v.logits, atol=1e-4)
    runner.commit(np.array([0, 1, 3]))
    torch_runner.commit(np.array([0, 1, 3]))
    after = runner.verify(np.array([4]), np.array([runner.length]), np.ones((1, 1), bool))
    np.testing.assert_allclose(after.logits, torch_runner.verify(np.array([4]), np.array([torch_runner.length]),
                                                                  np.ones((1, 1), bool)).logits, atol=1e-4)


def test_kv_ortvalues_keep_identity_over_100_questions(exported_tiny, image) -> None:
    from runtime.session import Session

    session = Session.from_dir(exported_tiny[0], speculative=False, threads=1)
    cache = session.target.cache
    ids = (id(cache.k.value), id(cache.v.value), cache.k.value.data_ptr(), cache.v.value.data_ptr())
    for i in range(100):
        session.ask(image if i % 2 else None, QUESTIONS[i % 3], stream=False, max_new_tokens=3)
        assert (id(cache.k.value), id(cache.v.value), cache.k.value.data_ptr(), cache.v.value.data_ptr()) == ids


def test_bad_input_leaves_session_usable(exported_tiny, image, tmp_path) -> None:
    from runtime.session import Session

    session = Session.from_dir(exported_tiny[0], threads=1)
    with pytest.raises(PromptError):
        session.ask(image, "   ", stream=False)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError):
        list(session.ask(bad, "What is it?", stream=True))
    pieces = list(session.ask(image, "What is it?", stream=True, max_new_tokens=8))
    assert "".join(pieces) == session.prompts.decode(session.last_result.tokens)


@pytest.mark.parametrize("with_image", [True, False])
def test_prefill_keeps_the_template_head_of_the_previous_prompt(exported_tiny, ort_parts, image, with_image) -> None:
    """The second prompt runs only past the shared head, and its logits and features equal a fresh
    runner's; the question itself is never kept, so a prompt asked twice reuses the same."""
    manifest, prompts, runner = ort_parts
    picture = image if with_image else None
    fresh = OrtTargetRunner(manifest, threads=1)
    first, second = prompts.build(picture, QUESTIONS[0]), prompts.build(picture, QUESTIONS[2])
    head = prompts.head(with_image)
    assert 0 < head < first.input_ids.size and first.head == second.head == head
    np.testing.assert_array_equal(first.input_ids[:head], second.input_ids[:head])
    runner.prefill(first)
    got = runner.prefill(second)
    image_at = np.flatnonzero(second.input_ids == manifest["target"]["image_token_id"])
    assert got.reused == (image_at[0] if with_image else head)
    ref = fresh.prefill(second)
    assert ref.reused == 0
    np.testing.assert_allclose(got.logits, ref.logits, atol=1e-5)
    np.testing.assert_allclose(got.features, ref.features, atol=1e-5)
    assert runner.length == fresh.length == second.input_ids.size
    assert runner.prefill(second).reused == got.reused  # the same prompt again: still only the head
