"""SmolVLM / Idefics3: a SigLIP vision tower, a pixel-shuffle connector and a Llama-style text model.

The text model is `model.model.text_model` (SmolLM2 for the kit's embedded default). Images go
through `Idefics3Model.get_image_features` (vision tower, then pixel shuffle and projection), one
image embedding per `<image>` token; positions are plain 1D.
"""

from __future__ import annotations

from torch import nn

from dream_s_edge.targets.base import TargetAdapter


class Idefics3Adapter(TargetAdapter):
    """Idefics3ForConditionalGeneration (SmolVLM, SmolVLM-Instruct)."""

    model_class = "Idefics3ForConditionalGeneration"
    family_names = ("smolvlm",)
    pixel_keys = ("pixel_values", "pixel_attention_mask")

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.text_model
