"""Reading user images safely: one place that turns a path into an RGB PIL image or a clear error.

Used by the PyTorch CLI and the torch-free runtime alike (PIL and numpy only).
"""

from __future__ import annotations

from pathlib import Path

from runtime.errors import ImageError

# Modes taken as they are, or converted without losing meaning.
_ACCEPTED_MODES = {"RGB", "L", "P"}
_CONVERT_HINT = "convert it to 8-bit RGB without transparency first, e.g. `PIL.Image.open(p).convert('RGB').save('rgb.png')`"


def load_image(path: str | Path):
    """Opens an image file and returns it as an 8-bit RGB `PIL.Image.Image`.

    Raises:
        ImageError: the file is missing, is not an image, is truncated or corrupt, or has a mode
            the kit does not take (CMYK, 16-bit or float, an alpha channel).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageError(f"Image not found: {path}.", hint="check the path (relative paths start at the current folder)")
    if path.is_dir():
        raise ImageError(f"Image path is a folder: {path}.", hint="pass one image file")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    except UnidentifiedImageError as error:
        raise ImageError(
            f"Cannot read {path} as an image.", hint="pass a PNG, JPEG, BMP or WebP file"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(
            f"The image {path} is corrupt or truncated.", note=str(error), hint="re-export or re-download the file"
        ) from error
    return _to_rgb(image, path)


def _to_rgb(image, path: Path):
    """Converts the accepted modes to RGB; refuses the others with the reason."""
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        mode = "PA"
    if mode not in _ACCEPTED_MODES:
        raise ImageError(
            f"Unsupported image mode {mode} in {path}.",
            note=_mode_reason(mode),
            hint=_CONVERT_HINT,
        )
    return image.convert("RGB")


def _mode_reason(mode: str) -> str:
    """Says in words why a mode is refused."""
    if mode == "CMYK":
        return "CMYK is a print colour space; the model expects RGB"
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        return "the image has an alpha channel, and what lies under transparent pixels is undefined"
    if mode.startswith("I") or mode == "F":
        return "16-bit, 32-bit and float images have no defined 8-bit mapping"
    return "the model expects 8-bit RGB or grayscale"
