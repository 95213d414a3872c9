"""Procedural scenes: sample a `Scene` from a seeded generator, then render it to a PIL image.

A scene is pure data (objects with shape, colour, size and grid cell; an optional written word; a
background style), so questions and answers are derived from the data, never from pixels. Rendering is
deterministic given the scene, including background noise and texture, which carry their own seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dream_s_edge.data.vocab import COLOURS, GRID, MAX_OBJECTS, SHAPES, SIZES, WORDS

BACKGROUNDS: tuple[str, ...] = ("plain", "noisy", "textured")


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape."""

    shape: str  # one of vocab.SHAPES
    colour: str  # one of vocab.COLOURS
    size: str  # one of vocab.SIZES
    cell: int  # grid cell, row-major in [0, GRID * GRID)
    dx: int  # jitter of the centre from the cell centre, pixels
    dy: int

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID


@dataclass(frozen=True)
class Scene:
    """Everything that is drawn in one image."""

    objects: tuple[SceneObject, ...]
    word: str | None  # a word written across `word_row`, or None
    word_row: int  # the grid row the word occupies (no object sits in it); -1 when no word
    background: str  # one of BACKGROUNDS
    background_rgb: tuple[int, int, int]
    texture_seed: int  # seeds the noise or texture of the background
    image_size: int = 256


def sample_scene(rng: np.random.Generator, image_size: int = 256, word_prob: float = 0.4) -> Scene:
    """Draws a random scene: 1..MAX_OBJECTS shapes in distinct cells, maybe a word, a background.

    Args:
        rng: the only source of randomness, so a scene is a pure function of the generator's seed.
        image_size: side of the square canvas, pixels.
        word_prob: chance that the scene has a written word (which then takes one grid row).
    """
    word = str(rng.choice(WORDS)) if rng.random() < word_prob else None
    word_row = int(rng.integers(GRID)) if word else -1
    free = [c for c in range(GRID * GRID) if c // GRID != word_row]
    count = int(rng.integers(1, min(MAX_OBJECTS, len(free)) + 1))
    cells = sorted(int(c) for c in rng.choice(free, size=count, replace=False))
    scale = image_size / 256
    jitter = int(8 * scale)
    objects = tuple(
        SceneObject(
            shape=str(rng.choice(SHAPES)),
            colour=str(rng.choice(list(COLOURS))),
            size=str(rng.choice(list(SIZES))),
            cell=cell,
            dx=int(rng.integers(-jitter, jitter + 1)),
            dy=int(rng.integers(-jitter, jitter + 1)),
        )
        for cell in cells
    )
    background = str(rng.choice(BACKGROUNDS))
    background_rgb = tuple(int(v) for v in rng.integers(190, 256, size=3))
    return Scene(objects, word, word_row, background, background_rgb, int(rng.integers(2**31)), image_size)


def render_scene(scene: Scene) -> Image.Image:
    """Renders a scene to an RGB image of side `scene.image_size`."""
    image = Image.fromarray(_background(scene), mode="RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_shape(draw, obj, scene.image_size)
    if scene.word:
        _draw_word(draw, scene.word, scene.word_row, scene.image_size)
    return image


def _background(scene: Scene) -> np.ndarray:
    """The background pixels: plain, per-pixel noise, or a smooth random texture."""  # [H, W, 3] uint8
    side = scene.image_size
    base = np.broadcast_to(np.asarray(scene.background_rgb, np.float32), (side, side, 3))
    if scene.background == "plain":
        return base.astype(np.uint8)
    rng = np.random.default_rng(scene.texture_seed)
    if scene.background == "noisy":
        noise = rng.normal(0.0, 18.0, size=(side, side, 1))
    else:  # textured: low-frequency blobs plus stripes
        coarse = rng.normal(0.0, 1.0, size=(8, 8, 1)).astype(np.float32)
        noise = np.kron(coarse, np.ones((side // 8, side // 8, 1), np.float32)) * 14.0
        freq, angle = rng.uniform(0.05, 0.2), rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:side, 0:side]
        stripes = np.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)))[..., None] * 12.0
        noise = noise + stripes
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def cell_center(cell: int, image_size: int) -> tuple[float, float]:
    """Centre (x, y) in pixels of a grid cell."""
    step = image_size / GRID
    return (cell % GRID + 0.5) * step, (cell // GRID + 0.5) * step


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, image_size: int) -> None:
    """Draws one shape, filled, centred at its cell centre plus jitter."""
    cx, cy = cell_center(obj.cell, image_size)
    cx, cy = cx + obj.dx, cy + obj.dy
    r = SIZES[obj.size] * image_size / 256
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj.shape == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    else:
        draw.polygon(_polygon(obj.shape, cx, cy, r), fill=fill)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of the polygonal shapes (triangle, star, diamond)."""
    if shape == "triangle":
        angles, radii = [-90, 30, 150], [r, r, r]
    elif shape == "diamond":
        angles, radii = [-90, 0, 90, 180], [r, r * 0.7, r, r * 0.7]
    else:  # five-pointed star
        angles = [-90 + 36 * i for i in range(10)]
        radii = [r if i % 2 == 0 else r * 0.45 for i in range(10)]
    return [
        (cx + q * math.cos(math.radians(a)), cy + q * math.sin(math.radians(a)))
        for a, q in zip(angles, radii, strict=True)
    ]


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font, so rendering needs no system fonts."""
    return ImageFont.load_default(size=size)


def _word_anchor(row: int, image_size: int) -> tuple[ImageFont.FreeTypeFont, float, float]:
    """Font and centre (x, y) of a word written across grid row `row`."""
    step = image_size / GRID
    return _font(int(step * 0.55)), image_size / 2, (row + 0.5) * step


def _draw_word(draw: ImageDraw.ImageDraw, word: str, row: int, image_size: int) -> None:
    """Writes the word in black, centred in its grid row."""
    font, x, y = _word_anchor(row, image_size)
    draw.text((x, y), word.upper(), fill=(0, 0, 0), font=font, anchor="mm")


def word_box(scene: Scene) -> tuple[float, float, float, float]:
    """Pixel box (left, top, right, bottom) of the scene's written word; the scene must have one."""
    assert scene.word, "the scene has no written word"
    font, x, y = _word_anchor(scene.word_row, scene.image_size)
    left, top, right, bottom = font.getbbox(scene.word.upper(), anchor="mm")
    return x + left, y + top, x + right, y + bottom


def object_count(scene: Scene) -> int:
    """Number of drawn shapes (the word is not counted)."""
    return len(scene.objects)


assert MAX_OBJECTS <= GRID * GRID - GRID  # a word row still leaves room for MAX_OBJECTS shapes
