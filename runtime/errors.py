"""The one exception hierarchy of dream-s-edge.

It lives in `runtime/` because that is the lowest layer: `export/`, `search/` and `dream_s_edge/`
import it from here, and the torch-free runtime needs it too.

Messages follow three parts: what happened, the numbers (``Note:``), and the fix (``Hint:``).
Use :func:`format_message` to build them.
"""

from __future__ import annotations


def format_message(what: str, note: str | None = None, hint: str | None = None) -> str:
    """Joins the three parts of an error message into one line each."""
    parts = [what]
    if note:
        parts.append(f"Note: {note}")
    if hint:
        parts.append(f"Hint: {hint}")
    return " ".join(parts)


class DreamSEdgeError(Exception):
    """Base class of every error the kit raises on purpose."""

    def __init__(self, what: str, note: str | None = None, hint: str | None = None):
        super().__init__(format_message(what, note, hint))
        self.what = what
        self.note = note
        self.hint = hint


class UserInputError(DreamSEdgeError):
    """Bad input from a user: an image, a question, a prompt, a flag."""


class ImageError(UserInputError):
    """An image that cannot be read, or has a mode the kit does not take."""


class PromptError(UserInputError):
    """An empty question, or a prompt longer than the context."""


class ModelLoadError(DreamSEdgeError):
    """A model folder or file that cannot be loaded (unknown family, missing files)."""


class SpecMismatchError(DreamSEdgeError):
    """Two parts that must agree do not: a draft and its target, a tree and its buffers."""


class CapacityError(DreamSEdgeError):
    """A request beyond what preallocated buffers were sized for (context, node budget, depth)."""


class ManifestError(DreamSEdgeError):
    """An artifact manifest that is missing, malformed or disagrees with its files."""


class ExportError(DreamSEdgeError):
    """An export step (ONNX, parity check) that failed."""


class EngineError(DreamSEdgeError):
    """A TensorRT engine that cannot be built or loaded here."""


class TrainingError(DreamSEdgeError):
    """A training run that cannot start or resume (incompatible checkpoint, bad schedule)."""
