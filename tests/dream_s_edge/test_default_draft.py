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
