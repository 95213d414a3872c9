"""Tests for dream_s_edge/generation.py on the embedded default target (real SmolLM2-135M weights)."""

import torch

from dream_s_edge.generation import (
    GenerationConfig,
    build_prompt,
    generate,
    load_model,
    resolve_image,
    run_generate,
    tokenizer_of,
)


def _hf_greedy(adapter, image, question, max_new_tokens):
    inputs = adapter.build_inputs(image, question)
    with torch.inference_mode():
        out = adapter.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_greedy_generate_equals_transformers_generate(default_adapter):
    config = GenerationConfig(max_new_tokens=24, max_context=512)
    for image, question in [
        (resolve_image("example:astronaut"), "Describe this picture in one sentence."),
        (None, "What is the capital of France?"),
    ]:
        prompt = build_prompt(default_adapter, image, question, config.max_context)
        ours = generate(default_adapter, prompt, config).tokens.tolist()
        assert ours == _hf_greedy(default_adapter, image, question, config.max_new_tokens)


def test_streamed_text_is_fluent_english_and_matches_the_tokens(default_target_dir):
    pieces = []
    config = GenerationConfig(max_new_tokens=24)
    report = run_generate("default", None, "What is the capital of France?", config, write=pieces.append)
    assert "".join(pieces) == report.text
    assert "Paris" in report.text
    tokenizer = tokenizer_of(load_model("default"))
    assert tokenizer.decode(report.result.tokens, skip_special_tokens=True) == report.text
