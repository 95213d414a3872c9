"""Tests for runtime/detokenize.py: streamed pieces join to the full decode, never splitting a character."""

from runtime.detokenize import TextStreamer

# A byte-level toy vocabulary: each id is one UTF-8 byte, so multi-byte characters span tokens.
TEXT = "naïve café ☕ done"
IDS = list(TEXT.encode("utf-8"))


def _decode(ids):
    return bytes(ids).decode("utf-8", errors="replace")


def test_pieces_join_to_the_whole_text_and_hold_back_partial_characters():
    streamer = TextStreamer(_decode)
    pieces = [streamer.push([token]) for token in IDS]
    pieces.append(streamer.finish())
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in piece for piece in pieces)
    assert streamer.text == TEXT
