"""The closed vocabulary of the scene-QA data set: shapes, colours, sizes, grid cells and words.

Every answer the data set asks for is one of these names, so an answer is always a short, exact string.
`scenes.py` draws with these values and `questions.py` phrases questions and answers with them.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")

# Saturated colours that stay distinct from every background in `scenes.py` (backgrounds are light).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 0),
    "purple": (140, 40, 180),
    "orange": (245, 120, 0),
    "black": (20, 20, 20),
}

# Radius (pixels on a 256-pixel canvas) of each size name.
SIZES: dict[str, int] = {"small": 15, "medium": 21, "large": 27}

GRID = 3  # objects sit in a GRID x GRID layout of cells
# Cell names, row-major: the answer to "Where is the ...?".
CELL_NAMES: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip

# Short words written into some scenes; each is one token of SmolLM2's tokenizer.
WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "car", "hat", "cup", "pen", "map",
    "key", "bus", "egg", "owl", "fox", "bee", "box", "ice",
)  # fmt: skip

NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)

MAX_OBJECTS = 6  # the count question's answers are "1" ... str(MAX_OBJECTS)
