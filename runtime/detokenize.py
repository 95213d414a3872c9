"""Incremental detokenization for streaming answers.

Decoding token by token breaks multi-byte characters and word-leading spaces, so the streamer
decodes the whole answer so far and emits only the new, complete suffix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_INCOMPLETE = "\ufffd"  # what decoders emit for a partial UTF-8 sequence


class TextStreamer:
    """Turns a growing list of token ids into text pieces.

    Args:
        decode: maps token ids to text (a `tokenizers.Tokenizer.decode` or an HF tokenizer's), with
            special tokens skipped.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self._decode = decode
        self._ids: list[int] = []
        self._emitted = 0

    def push(self, token_ids: Sequence[int]) -> str:
        """Adds tokens; returns the text that became complete (may be empty)."""
        self._ids.extend(int(t) for t in token_ids)
        text = self._decode(self._ids)
        if text.endswith(_INCOMPLETE):
            return ""
        piece = text[self._emitted :]
        self._emitted = len(text)
        return piece

    def finish(self) -> str:
        """Returns whatever text is left, partial characters included."""
        text = self._decode(self._ids)
        piece = text[self._emitted :]
        self._emitted = len(text)
        return piece

    @property
    def text(self) -> str:
        """The whole answer so far."""
        return self._decode(self._ids)
