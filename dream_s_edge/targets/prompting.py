"""From (image, question) to the text the target's processor tokenizes.

Checks the user's inputs, renders the family's chat template with one image placeholder and the
generation prompt, and loads the processor of a model folder. Some HF processors (Pixtral, Qwen2-VL)
refuse to load without torchvision even though their PIL image processors work; for those a
`PromptKit` (tokenizer + image processor + chat template) stands in, and the family adapter expands
the image placeholder itself.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ImageError, ModelLoadError, PromptError

logger = logging.getLogger(__name__)

_CONVERTIBLE_MODES = {"RGB", "L", "P"}


@dataclass(frozen=True)
class PromptKit:
    """A processor's parts, for families whose HF processor class cannot be built here.

    Attributes:
        tokenizer: the model's tokenizer.
        image_processor: the family's image processor (PIL backend where torchvision is missing).
        chat_template: Jinja chat template (the processor's, else the tokenizer's), or None.
        options: processor_config.json fields (patch_size, spatial_merge_size, ...), maybe empty.
    """

    tokenizer: Any
    image_processor: Any
    chat_template: str | None
    options: dict


def check_question(question: str) -> str:
    """Returns the question, or raises PromptError for an empty one."""
    if not isinstance(question, str) or not question.strip():
        raise PromptError("The question is empty.", hint="pass a non-empty question string")
    return question


def check_image(image):
    """Returns an RGB PIL image (or None), or raises ImageError."""
    if image is None:
        return None
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise ImageError(
            f"Expected a PIL image, got {type(image).__name__}.",
            hint="load it with runtime.images.load_image(path)",
        )
    if image.mode not in _CONVERTIBLE_MODES:
        raise ImageError(
            f"Unsupported image mode {image.mode}.",
            hint="convert it to 8-bit RGB first: image.convert('RGB')",
        )
    return image.convert("RGB")


def chat_messages(question: str, has_image: bool) -> list[dict]:
    """One user turn: the image placeholder first, then the question."""
    content = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def render_prompt(processor, question: str, has_image: bool) -> str:
    """Renders the chat template with add_generation_prompt=True; returns the prompt text."""
    messages = chat_messages(question, has_image)
    if isinstance(processor, PromptKit):
        template = processor.chat_template
        tokenizer = processor.tokenizer
    else:
        template = getattr(processor, "chat_template", None)
        tokenizer = getattr(processor, "tokenizer", processor)
        if template is not None:
            return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    template = template or getattr(tokenizer, "chat_template", None)
    if template is None:
        raise ModelLoadError(
            "The model folder has no chat template.",
            hint="add chat_template.jinja (the family's template) to the model folder",
        )
    return tokenizer.apply_chat_template(
        messages, chat_template=template, add_generation_prompt=True, tokenize=False
    )


def adds_special_tokens(tokenizer, text: str) -> bool:
    """Whether tokenizing `text` should add special tokens: not when the template already wrote BOS
    (the rule of HF's ProcessorMixin.apply_chat_template)."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos is not None and text.startswith(bos))


def load_processor(path: Path, needs_kit: bool = False):
    """Loads the folder's HF processor, or a PromptKit when `needs_kit` or the class cannot load.

    Raises:
        ModelLoadError: the folder has no usable tokenizer.
    """
    from transformers import AutoProcessor

    if not needs_kit:
        try:
            processor = AutoProcessor.from_pretrained(path)
        except ImportError as error:  # e.g. a processor class that requires torchvision
            logger.info("HF processor unavailable (%s); using a PromptKit", error)
        else:
            if hasattr(processor, "image_processor"):
                return processor
    return load_prompt_kit(path)


def load_prompt_kit(path: Path) -> PromptKit:
    """Builds a PromptKit from the folder's tokenizer, image processor and chat template files."""
    from transformers import AutoImageProcessor, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Cannot load a tokenizer from {path}.", note=str(error)) from error
    try:
        image_processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as error:
        logger.warning("No image processor in %s (%s); text-only prompts only", path, error)
        image_processor = None
    options = _read_json(path / "processor_config.json")
    return PromptKit(tokenizer, image_processor, _read_template(path, options), options)


def _read_template(path: Path, options: dict) -> str | None:
    """The processor's chat template: chat_template.jinja, chat_template.json, processor_config.json."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = _read_json(path / "chat_template.json").get("chat_template")
    return template or options.get("chat_template")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    return json.loads(path.read_text())
