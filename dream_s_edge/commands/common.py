"""Helpers shared by the CLI's command modules (only the CLI prints)."""

from __future__ import annotations

import sys


def quiet_transformers(verbose: bool) -> None:
    """Silences transformers' own warnings and bars unless -v; only torch-side commands call it."""
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def write_piece(text: str) -> None:
    """Writes a streamed piece of an answer to stdout at once."""
    sys.stdout.write(text)
    sys.stdout.flush()


def set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
