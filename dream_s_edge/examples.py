"""Example photographs: the real photographs scikit-image ships (skimage/data).

The CLI takes `--image example:NAME` for one of them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from runtime.errors import UserInputError

PHOTOS = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
}


def example_image(name: str) -> Path:
    """Returns the path of a named photograph from scikit-image's data folder."""
    if name not in PHOTOS:
        raise UserInputError(f"Unknown example image {name!r}.", hint=f"choose one of {sorted(PHOTOS)}")
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise UserInputError("Example images need scikit-image.", hint="pip install scikit-image")
    path = Path(spec.origin).parent / "data" / PHOTOS[name]
    if not path.exists():
        raise UserInputError(f"scikit-image has no {PHOTOS[name]} at {path}.", hint="reinstall scikit-image")
    return path
