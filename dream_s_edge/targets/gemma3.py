"""Gemma3: a SigLIP tower, an average-pooling projector and a text model with sliding-window layers.

Two mask rules differ from the other families, both as in `Gemma3Model.forward`:
- the text config's `layer_types` mix "sliding_attention" and "full_attention" layers, so the
  language model takes a dict of two masks (the sliding one also hides keys `sliding_window` or
  more positions behind the query);
- at prefill, the image tokens of one image see each other both ways (a bidirectional block), in
  full and sliding layers alike; `prefill_inputs["token_type_ids"]` (1 at image tokens) marks them.
HF v5's Gemma3 applies no final logit softcapping, and neither does this adapter.
"""

from __future__ import annotations

import torch
from torch import nn

from dream_s_edge.targets import masks
from dream_s_edge.targets.base import TargetAdapter


class Gemma3Adapter(TargetAdapter):
    """Gemma3ForConditionalGeneration."""

    model_class = "Gemma3ForConditionalGeneration"
    family_names = ("gemma3",)
    accepts_mask_mapping = True

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    def _visibility(
        self, start: int, num_tokens: int, max_len: int, tree_mask, prefill_inputs
    ) -> torch.Tensor:
        visible = super()._visibility(start, num_tokens, max_len, tree_mask, prefill_inputs)
        token_types = (prefill_inputs or {}).get("token_type_ids")
        if token_types is None:
            return visible
        return masks.with_blocks(visible, start, image_blocks(token_types[0].to(self.device)))


def image_blocks(token_types: torch.Tensor) -> torch.Tensor:
    """Block id of each token [T]: 0, 1, ... per run of image tokens (type 1), -1 for text."""
    is_image = token_types == 1
    starts = is_image & ~torch.nn.functional.pad(is_image, (1, 0))[:-1]
    return torch.where(is_image, torch.cumsum(starts.long(), 0) - 1, -1)
