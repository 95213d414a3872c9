"""load_target: family detection, and the errors users meet (folder, prompt, image, capacity)."""

from __future__ import annotations

import json

import pytest
import torch

from dream_s_edge.targets import SUPPORTED_FAMILIES, adapter_for
from dream_s_edge.targets.gemma3 import image_blocks
from runtime.errors import CapacityError, ImageError, ModelLoadError, PromptError


def test_unknown_or_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="nowhere") as missing:
        adapter_for(tmp_path / "nowhere")
    assert "qwen2_5_vl" in str(missing.value) and "idefics3" in str(missing.value)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper", "architectures": ["Whisper"]}))
    with pytest.raises(ModelLoadError, match="whisper") as unknown:
        adapter_for(tmp_path)
    assert str(tmp_path) in str(unknown.value) and "gemma3" in str(unknown.value)


def test_family_detection(model_dirs, targets):
    for family in SUPPORTED_FAMILIES:
        assert family in adapter_for(model_dirs(family)).family_names
    assert targets("pixtral").spec.family == "pixtral" and targets("llava").spec.family == "llava"


def test_bad_prompt_and_image(targets, image):
    target = targets("smolvlm")
    with pytest.raises(PromptError, match="empty"):
        target.build_inputs(image, "  ")
    with pytest.raises(ImageError, match="PIL"):
        target.build_inputs("photo.png", "What is it?")
    with pytest.raises(ImageError, match="mode"):
        target.build_inputs(image.convert("RGBA"), "What is it?")


def test_prompt_longer_than_cache(targets, image):
    target = targets("smolvlm")
    inputs = target.build_inputs(image, "What is it?")
    embeds = target.embed(inputs["input_ids"], target.encode_images(**inputs))
    positions, _ = target.prompt_positions(inputs)
    with pytest.raises(CapacityError, match="KV cache"):
        target.decoder_step(embeds, positions, target.new_cache(8), 0)


def test_gemma3_image_blocks():
    types = torch.tensor([0, 1, 1, 0, 1, 0])
    assert image_blocks(types).tolist() == [-1, 0, 0, -1, 1, -1]
