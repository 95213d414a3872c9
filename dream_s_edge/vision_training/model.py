"""The trainable view of an Idefics3 target: vision tower and connector train, the language model is
frozen, and the constant chat prefix is run through it once and cached.

Data flow of one step: pixels [B, 3, H, W] -> vision tower -> connector -> visual tokens [B, Tv, D];
token embeddings [B, T, D] with the <image> rows replaced by the visual tokens; the frozen text model
continues from the cached prefix; logits are computed only at labelled positions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from dream_s_edge.vision_training.lora import merge_lora, split_lora
from dream_s_edge.vision_training.sequences import IGNORE

logger = logging.getLogger(__name__)

TRAINED_PREFIXES = ("model.vision_model.", "model.connector.")  # the tensors that train and ship


def load_target(model_dir: str | None, device: torch.device):
    """Loads (model, processor, folder) of an Idefics3 target; None = the embedded default target."""
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    if model_dir is None:
        from dream_s_edge.embedded import ensure_default_target

        folder = ensure_default_target(trained=False)  # SmolLM2 as released, tower untrained
    else:
        folder = Path(model_dir)
    model = Idefics3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).to(device)
    processor = AutoProcessor.from_pretrained(folder)
    return model.eval(), processor, Path(folder)


def target_init_seed(folder: Path, override: int | None) -> int:
    """The seed the target's untrained tower was initialised with (embedded targets record it)."""
    if override is not None:
        return override
    meta = folder / "dream_s_edge.json"
    return json.loads(meta.read_text())["vision"]["seed"] if meta.exists() else 0


def untrained_state(model, seed: int) -> dict[str, torch.Tensor]:
    """The trained tensors as a fresh model built from the same config and seed initialises them.

    This reproduces the embedded build exactly (it seeds, then constructs the whole model), so training
    always starts from, and evaluation compares against, the tower that ships when nothing is trained.
    """
    fresh_cls = type(model)
    torch.manual_seed(seed)
    fresh = fresh_cls(model.config)
    return {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith(TRAINED_PREFIXES)}


def trained_state(model) -> dict[str, torch.Tensor]:
    """The tensors that vision training changes, by their names in the full model."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if k.startswith(TRAINED_PREFIXES)
    }


def load_trained(model, tensors: dict[str, torch.Tensor]) -> None:
    """Loads vision tensors into the model and merges LoRA pairs (`lora.*`) into its language model.

    Merging adds to the dense weights, so load an asset with LoRA pairs into a base model only once.
    """
    plain, lora = split_lora(tensors)
    missing = [k for k in plain if not k.startswith(TRAINED_PREFIXES)]
    assert not missing, f"not vision tensors: {missing[:3]}"
    model.load_state_dict(plain, strict=False)
    merge_lora(model, lora)


class VisionQA(nn.Module):
    """Frozen-LM wrapper: scores answer tokens given images and per-sample token sequences."""

    def __init__(self, model, prefix: tuple[int, ...], image_token_id: int):
        super().__init__()
        self.model = model
        self.refresh_prefix = False  # set when the language model trains (LoRA): re-run the prefix
        self.image_token_id = image_token_id
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(TRAINED_PREFIXES))
        self.register_buffer("prefix", torch.tensor([prefix]), persistent=False)  # [1, Tp]
        self._prefix_kv = None

    def visual_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Vision tower and connector: pixels [B, 3, H, W] -> visual tokens [B, Tv, D]."""
        inner = self.model.model
        return inner.connector(inner.vision_model(pixel_values=pixels).last_hidden_state)

    def visual_tokens_and_patches(self, pixels: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual tokens [B, Tv, D] and the tower's patch features after `layer` [B, P, E]."""
        inner = self.model.model
        out = inner.vision_model(pixel_values=pixels, output_hidden_states=True)
        return inner.connector(out.last_hidden_state), out.hidden_states[layer]

    @torch.no_grad()
    def _prefix_cache(self, batch: int):
        """A fresh cache holding the constant prefix, expanded to the batch (no copy)."""
        from transformers import DynamicCache

        if self._prefix_kv is None or self.refresh_prefix:
            out = self.model.model.text_model(input_ids=self.prefix, use_cache=True)
            self._prefix_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return DynamicCache(
            [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self._prefix_kv]
        )

    def forward(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        visual: torch.Tensor | None = None,
    ):
        """Loss and logits at labelled positions.

        Args:
            pixels: [B, 3, H, W] normalised images.
            input_ids: [B, T] per-sample tokens (starting with the image block), right-padded.
            labels: [B, T] next-token targets or IGNORE.
            visual: [B, Tv, D] the visual tokens of `pixels`, when the caller already has them.

        Returns:
            (loss, logits [M, V], targets [M]) over the M labelled positions, in row-major order.
        """
        text = self.model.model.text_model
        embeds = text.get_input_embeddings()(input_ids)  # [B, T, D]
        visual = (self.visual_tokens(pixels) if visual is None else visual).to(embeds.dtype)  # [B, Tv, D]
        mask = (input_ids == self.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, visual)
        hidden = text(
            inputs_embeds=embeds, past_key_values=self._prefix_cache(len(input_ids)), use_cache=True
        )
        picked = labels != IGNORE
        logits = self.model.lm_head(hidden.last_hidden_state[picked])  # [M, V]
        targets = labels[picked]  # [M]
        return F.cross_entropy(logits.float(), targets), logits, targets
