"""Qwen2-VL and Qwen2.5-VL: a ViT with patch merging and a text model with multimodal rope (mrope).

Positions are [3, B, T] (temporal, height, width). Image tokens take 2D grid positions, text tokens
take equal positions on all three rows; after the image the text positions run `rope_delta` behind
(or ahead of) the token count, so later text tokens sit at offset + rope_delta. `get_rope_index`
needs `mm_token_type_ids` (1 at image tokens): Qwen2-VL refuses to run without them and Qwen2.5-VL
silently gives wrong positions, so build_inputs always returns them.

Qwen's HF processors need torchvision (for their video processor); without it a PromptKit stands
in, and each `<|image_pad|>` is expanded here to grid_thw.prod() / merge_size**2 tokens, as
`Qwen2VLProcessor.replace_image_token` does.
"""

from __future__ import annotations

import torch
from torch import nn

from dream_s_edge.targets.base import TargetAdapter
from dream_s_edge.targets.prompting import PromptKit, adds_special_tokens

_IMAGE_PAD = "<|image_pad|>"


class Qwen2VLAdapter(TargetAdapter):
    """Qwen2VLForConditionalGeneration."""

    model_class = "Qwen2VLForConditionalGeneration"
    family_names = ("qwen2_vl",)
    pixel_keys = ("pixel_values", "image_grid_thw")
    accepts_mask_mapping = True

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    def prompt_positions(self, inputs: dict) -> tuple[torch.Tensor, int]:
        """Mrope position ids [3, B, T] of the prompt and the rope delta of later text tokens."""
        ids = inputs["input_ids"].to(self.device)
        token_types = inputs.get("mm_token_type_ids")
        if token_types is None:
            token_types = (ids == self.spec.image_token_id).int()
        grid = inputs.get("image_grid_thw")
        positions, deltas = self.model.model.get_rope_index(
            ids, mm_token_type_ids=token_types.to(self.device), image_grid_thw=grid
        )
        return positions, int(deltas.reshape(-1)[0])

    def positions_for(self, offsets: torch.Tensor, rope_delta: int) -> torch.Tensor:
        """Mrope position ids [3, B, T] of text tokens at absolute offsets [B, T]."""
        positions = offsets.to(self.device) + rope_delta
        return positions[None].expand(3, *positions.shape)

    def _process(self, text: str, image) -> dict[str, torch.Tensor]:
        if not isinstance(self.processor, PromptKit):
            return super()._process(text, image)
        kit = self.processor
        pixels = {}
        if image is not None:
            pixels = dict(kit.image_processor(images=[image], return_tensors="pt"))
            merge = kit.image_processor.merge_size
            count = int(pixels["image_grid_thw"][0].prod()) // merge**2
            text = text.replace(_IMAGE_PAD, _IMAGE_PAD * count, 1)
        special = adds_special_tokens(kit.tokenizer, text)
        ids = kit.tokenizer(text, add_special_tokens=special, return_tensors="pt")["input_ids"]
        token_types = (ids == self.spec.image_token_id).to(torch.int32)
        return {"input_ids": ids, "mm_token_type_ids": token_types, **pixels}


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2_5_VLForConditionalGeneration (same prompt, rope and mask rules as Qwen2-VL)."""

    model_class = "Qwen2_5_VLForConditionalGeneration"
    family_names = ("qwen2_5_vl",)
