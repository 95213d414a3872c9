"""Tests for runtime/images.py: every bad image gives an ImageError naming the problem and the fix."""

import numpy as np
import pytest
from PIL import Image

from runtime.errors import ImageError
from runtime.images import load_image


def _save(tmp_path, name, array, mode=None):
    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_rgb_and_grayscale_load_as_rgb(tmp_path):
    rgb = _save(tmp_path, "rgb.png", np.full((8, 9, 3), 200, np.uint8))
    gray = _save(tmp_path, "gray.png", np.full((8, 9), 17, np.uint8))
    for path in (rgb, gray):
        image = load_image(path)
        assert image.mode == "RGB" and image.size == (9, 8)
    assert np.asarray(load_image(gray))[0, 0].tolist() == [17, 17, 17]


@pytest.mark.parametrize(
    ("name", "make", "words"),
    [
        ("alpha.png", lambda: Image.new("RGBA", (4, 4)), "alpha"),
        ("cmyk.jpg", lambda: Image.new("CMYK", (4, 4)), "CMYK"),
        ("deep.png", lambda: Image.fromarray(np.zeros((4, 4), np.uint16)), "16-bit"),
    ],
)
def test_unsupported_modes_are_refused_with_reason_and_hint(tmp_path, name, make, words):
    path = tmp_path / name
    make().save(path)
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert "Unsupported image mode" in message and words in message and "Hint:" in message


def test_missing_folder_garbage_and_truncated_files(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageError, match="Cannot read"):
        load_image(garbage)
    good = _save(tmp_path, "good.jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(truncated)
