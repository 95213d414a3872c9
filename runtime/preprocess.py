"""Prompt and image preprocessing without torch or transformers, equal to the HF processor's output.

Place in the data flow: (PIL image, question) -> `PromptBuilder.build` -> `Prompt` (input_ids and
`pixel_values`) -> `OrtTargetRunner.prefill`. Everything is read from the manifest's `processor`
section, which export fills from the HF processor:

* the chat template (Jinja, rendered with jinja2 the way HF renders it) and the string one image
  placeholder expands into (SmolVLM: `<fake_token_around_image><global-img><image>*64<fake...>`);
* tokenization with `tokenizers` and the tokenizer.json export copied, adding special tokens unless
  the rendered text already starts with BOS (HF's rule);
* images (Idefics3 without splitting): resize the longest edge to `longest_edge` keeping the aspect
  ratio (even sides), resize that to a `max_image_size` square, both with PIL's resampling filter,
  then rescale and normalize per channel. Output [1, 3, s, s] float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import ImageError, ManifestError, PromptError
from runtime.prompt_head import shared_prefix
from runtime.runner import Prompt

MAX_IMAGE_SIZE = 4096  # Idefics3's upper bound on any side before the square resize


@dataclass(frozen=True)
class ImageConfig:
    """Idefics3 image preprocessing settings (the HF image processor's, copied at export)."""

    longest_edge: int
    max_image_size: int
    resample: int  # PIL filter id (1 = LANCZOS)
    rescale_factor: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @classmethod
    def from_dict(cls, data: dict) -> ImageConfig:
        return cls(
            longest_edge=int(data["longest_edge"]),
            max_image_size=int(data["max_image_size"]),
            resample=int(data["resample"]),
            rescale_factor=float(data["rescale_factor"]),
            image_mean=tuple(float(x) for x in data["image_mean"]),
            image_std=tuple(float(x) for x in data["image_std"]),
        )


def _even_aspect_size(height: int, width: int, max_len: int) -> tuple[int, int]:
    """Longest edge to max_len, aspect kept, the other side rounded up to even (HF's rule)."""
    aspect = width / height
    if width >= height:
        width, height = max_len, int(max_len / aspect)
        height += height % 2
    else:
        height, width = max_len, int(max_len * aspect)
        width += width % 2
    return max(height, 1), max(width, 1)


def _below_upper_bound(height: int, width: int, max_len: int) -> tuple[int, int]:
    """Shrinks an oversized image below max_len on its longest side."""
    aspect = width / height
    if width >= height and width > max_len:
        width, height = max_len, int(max_len / aspect)
    elif height > width and height > max_len:
        height, width = max_len, int(max_len * aspect)
    return max(height, 1), max(width, 1)


def preprocess_image(image, config: ImageConfig) -> np.ndarray:
    """An RGB PIL image -> pixel_values [1, 3, s, s] float32, as the HF Idefics3 processor makes them.

    Raises:
        ImageError: not a PIL image, or a mode other than RGB/L/P.
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise ImageError(f"Expected a PIL image, got {type(image).__name__}.", hint="use runtime.images.load_image")
    if image.mode not in ("RGB", "L", "P"):
        raise ImageError(f"Unsupported image mode {image.mode}.", hint="convert it to RGB first")
    image = image.convert("RGB")
    height, width = _even_aspect_size(image.height, image.width, config.longest_edge)
    height, width = _below_upper_bound(height, width, MAX_IMAGE_SIZE)
    side = config.max_image_size
    resized = image.resize((width, height), resample=config.resample)
    resized = resized.resize((side, side), resample=config.resample)
    pixels = np.asarray(resized, dtype=np.float64).transpose(2, 0, 1) * config.rescale_factor  # [3, s, s]
    pixels = pixels.astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.image_std, dtype=np.float32)[:, None, None]
    return ((pixels - mean) / std).astype(np.float32)[None]


class PromptBuilder:
    """Renders the chat template, expands the image placeholder and tokenizes, from the manifest.

    Args:
        folder: the artifact folder (holds tokenizer.json).
        processor: the manifest's `processor` section.
    """

    def __init__(self, folder: Path, processor: dict):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(Path(folder) / processor["tokenizer_file"]))
        self.placeholder = processor["image_placeholder"]
        self.expansion = processor["image_expansion"]
        self.bos_token = processor.get("bos_token")
        self.image_config = ImageConfig.from_dict(processor["image"])
        self._template = _compile_template(processor["chat_template"])
        self._heads: dict[bool, int] = {}

    def render(self, question: str, has_image: bool) -> str:
        """The prompt text: one user turn (image first, then the question) and the generation prompt."""
        content = [{"type": "image"}] if has_image else []
        content.append({"type": "text", "text": question})
        messages = [{"role": "user", "content": content}]
        return self._template.render(messages=messages, add_generation_prompt=True, bos_token=self.bos_token or "")

    def build(self, image, question: str) -> Prompt:
        """(PIL image or None, question) -> Prompt with input_ids [T] and, with an image, pixel_values.

        Raises:
            PromptError: an empty question.
            ImageError: an unusable image.
        """
        if not isinstance(question, str) or not question.strip():
            raise PromptError("The question is empty.", hint='ask something, e.g. "What is in this picture?"')
        extras = {}
        if image is not None:
            extras["pixel_values"] = preprocess_image(image, self.image_config)
        text = self.render(question.strip(), image is not None)
        if image is not None:
            text = text.replace(self.placeholder, self.expansion)
        return Prompt(input_ids=self._encode(text), extras=extras, head=self.head(image is not None))

    def head(self, has_image: bool) -> int:
        """Tokens every prompt starts with whatever the question: the template's part before it."""
        if has_image not in self._heads:
            probes = [self.render(question, has_image) for question in ("Hello", "123 ?")]
            if has_image:
                probes = [text.replace(self.placeholder, self.expansion) for text in probes]
            self._heads[has_image] = shared_prefix(*(self._encode(text) for text in probes))
        return self._heads[has_image]

    def _encode(self, text: str) -> np.ndarray:
        """Prompt text -> ids [T] int64 (special tokens added unless the text starts with BOS)."""
        special = not (self.bos_token is not None and text.startswith(self.bos_token))
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=special).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        """Token ids -> text, special tokens skipped."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def _compile_template(source: str):
    """Compiles a chat template in a sandbox with HF's settings (trim_blocks, lstrip_blocks)."""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as error:  # pragma: no cover - jinja2 ships with tokenizers' usual installs
        raise ManifestError("Rendering the chat template needs jinja2.", hint="pip install jinja2") from error
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source)
