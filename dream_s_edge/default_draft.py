"""The draft shipped for the embedded default target, and the `--draft` default every command shares.

The package carries it at `dream_s_edge/assets/default_draft/`, a folder `load_draft` reads
(`config.json` + `model.safetensors`, written by `save_draft`). Until one ships, `default_draft_dir()`
is None and commands keep their old default (an untrained draft, or none for `export`).

A shipped draft belongs to the embedded default target only (its embedding and LM head are the
target's), so it is the default only when the model is `default`. This module sits outside
`dream_s_edge/draft/` because that package imports torch, and `dream-s-edge demo` answers from its
cached export without torch.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_DRAFT_DIR = Path(__file__).resolve().parent / "assets" / "default_draft"
# The two files of a draft folder: the names `dream_s_edge.draft.checkpoint` writes (a test checks).
DRAFT_FILES = ("config.json", "model.safetensors")
# Optional third file: [V] answer-token counts of the training data, which rank the draft's tokens for
# `export --draft-vocab` (`dream_s_edge.draft.vocab_prune` reads and writes it).
TOKEN_COUNTS_FILE = "token_counts.npy"


def default_draft_dir() -> Path | None:
    """The shipped default draft's folder, or None when the package holds none (or only part of one)."""
    if all((DEFAULT_DRAFT_DIR / name).is_file() for name in DRAFT_FILES):
        return DEFAULT_DRAFT_DIR
    return None


def draft_or_default(draft: str | None, model: str | None = "default", fallback: str | None = "untrained") -> str | None:
    """The draft a command uses: the user's `--draft`, else the shipped one for the default model, else `fallback`.

    Args:
        draft: what the user passed (None when the flag was left out).
        model: the target: 'default' (or None, meaning the default) or a folder, which the shipped
            draft does not fit.
        fallback: used when no draft was given and none applies ('untrained', or None for no draft).
    """
    if draft is not None:
        return draft
    folder = default_draft_dir() if model in (None, "default") else None
    return str(folder) if folder is not None else fallback
