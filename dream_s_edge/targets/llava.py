"""LLaVA-1.5 (CLIP vision tower) and Pixtral (Pixtral vision tower), both LlavaForConditionalGeneration.

The language model is `model.model.language_model` (Llama for LLaVA-1.5, Mistral for Pixtral, whose
config may set a sliding window over every layer). Pixtral images keep their aspect ratio, so the
processor also returns `image_sizes`, and the prompt holds rows of `[IMG]` tokens separated by
`[IMG_BREAK]` and closed by `[IMG_END]`. Pixtral's HF processor needs torchvision; without it a
PromptKit stands in and the rows are expanded here, as `PixtralProcessor.replace_image_token` does.
"""

from __future__ import annotations

import torch
from torch import nn

from dream_s_edge.targets.base import TargetAdapter
from dream_s_edge.targets.prompting import PromptKit, adds_special_tokens


class LlavaAdapter(TargetAdapter):
    """LlavaForConditionalGeneration with a CLIP ("llava") or Pixtral ("pixtral") vision tower."""

    model_class = "LlavaForConditionalGeneration"
    family_names = ("llava", "pixtral")
    pixel_keys = ("pixel_values", "image_sizes")

    @classmethod
    def family_of(cls, config) -> str:
        return "pixtral" if config.vision_config.model_type == "pixtral" else "llava"

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    def _process(self, text: str, image) -> dict[str, torch.Tensor]:
        if not isinstance(self.processor, PromptKit):
            return super()._process(text, image)
        kit = self.processor
        pixels = {}
        if image is not None:
            pixels = dict(kit.image_processor(images=[image], return_tensors="pt"))
            text = text.replace("[IMG]", self._image_rows(pixels["image_sizes"][0]), 1)
        special = adds_special_tokens(kit.tokenizer, text)
        ids = kit.tokenizer(text, add_special_tokens=special, return_tensors="pt")["input_ids"]
        return {"input_ids": ids, **pixels}

    def _image_rows(self, image_size: torch.Tensor) -> str:
        """The placeholder text of one image: rows of [IMG], [IMG_BREAK] between, [IMG_END] last."""
        options = self.processor.options
        merge = options.get("spatial_merge_size", getattr(self.model.config, "spatial_merge_size", 1))
        patch = options.get("patch_size", self.model.config.vision_config.patch_size) * merge
        height, width = (int(v) // patch for v in image_size)
        rows = ["[IMG]" * width + "[IMG_BREAK]"] * height
        return "".join(rows)[: -len("[IMG_BREAK]")] + "[IMG_END]"
