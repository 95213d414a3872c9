"""dream_s_edge/default_draft.py: the shipped default draft is the `--draft` default for the default model only."""

from __future__ import annotations

from dream_s_edge import default_draft
from dream_s_edge.default_draft import DRAFT_FILES, default_draft_dir, draft_or_default


def test_draft_files_are_the_checkpoint_files() -> None:
    from dream_s_edge.draft.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    assert set(DRAFT_FILES) == {CONFIG_FILE, WEIGHTS_FILE}


def test_missing_draft_keeps_the_old_defaults(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(default_draft, "DEFAULT_DRAFT_DIR", tmp_path / "default_draft")
    assert default_draft_dir() is None
    (tmp_path / "default_draft").mkdir()
    (tmp_path / "default_draft" / "config.json").write_text("{}")  # half a draft is no draft
    assert default_draft_dir() is None
    assert draft_or_default(None) == "untrained"
    assert draft_or_default(None, "default", fallback=None) is None
    assert draft_or_default("oracle") == "oracle"


def test_shipped_draft_is_the_default_for_the_default_model(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "default_draft"
    folder.mkdir()
    for name in DRAFT_FILES:
        (folder / name).write_bytes(b"x")
    monkeypatch.setattr(default_draft, "DEFAULT_DRAFT_DIR", folder)
    assert default_draft_dir() == folder
    assert draft_or_default(None) == str(folder)
    assert draft_or_default(None, None) == str(folder)  # bench: no --model means the default
    assert draft_or_default(None, "default", fallback=None) == str(folder)
    assert draft_or_default(None, str(tmp_path / "other-model")) == "untrained"  # it fits the default only
    assert draft_or_default("untrained") == "untrained"


def test_shipped_draft_is_small_half_precision_and_fits_the_default_target() -> None:
    import json

    folder = default_draft_dir()
    assert folder is not None, "dream_s_edge/assets/default_draft/ must ship (make default-draft rebuilds it)"
    assert (folder / "model.safetensors").stat().st_size <= 25 * 2**20
    config = json.loads((folder / "config.json").read_text())
    assert config["weights_dtype"] == "float16"
    record = config["distillation"]
    assert record["layer_selection"]["band"] and record["validation"]["tau"] >= 3.0
    assert config["draft_spec"]["draft_vocab_size"] == 16384


def test_shipped_draft_speculates_losslessly_on_the_default_target(default_adapter) -> None:
    """The shipped draft on a held-out scene with an open question: the target's own greedy tokens, in
    fewer target passes than tokens (a trained draft is accepted; an untrained one stays near τ 1)."""
    import numpy as np
    import torch

    from dream_s_edge.distill.prompts import heldout_prompts, materialize
    from dream_s_edge.generation import GenerationConfig, TreeOptions, build_prompt, generate

    spec = heldout_prompts(0, 0, seed=0, num_open_scene=1)[0]
    image, question = materialize(spec)
    config = GenerationConfig(max_new_tokens=32, max_context=512)
    prompt = build_prompt(default_adapter, image, question, config.max_context)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = generate(default_adapter, prompt, config)
        fast = generate(default_adapter, prompt, config, TreeOptions(top_k=4, depth=5, node_budget=16),
                        draft=str(default_draft_dir()))
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(fast.tokens, plain.tokens)
    assert fast.metrics.tau >= 2.0, fast.metrics.accept_counts
