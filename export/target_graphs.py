"""Torch modules that trace into the target's ONNX graphs: the decoder step and the vision encoder.

Place in the data flow: `TargetAdapter` (a loaded HF VLM) -> `DecoderStep` / `VisionEncoder` ->
`torch.onnx.export` (in `export/onnx_export.py`) -> `decoder.onnx` / `vision.onnx`. The modules call
the real HF submodules (the language model with a 4D additive mask, the vision tower and connector),
so every family the adapters serve with a plain Llama-style text model exports the same way.

The decoder step follows `export/contract.py`: past K/V come in slot-major `[1, P, Hkv, D]` and are
joined with the new tokens' K/V inside the graph through `PastCache`, a HF `Cache` that records the
new K/V so the graph can return them.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin


class _PastLayer(CacheLayerMixin):
    """One layer: fixed past K/V [1, Hkv, P, D]; `update` appends the new ones and records them."""

    is_compileable = False
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.is_initialized = True
        self.new_keys = self.new_values = None

    def lazy_initialization(self, key_states, value_states) -> None:
        """Nothing to do: the past exists from construction."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Consumes new K/V [1, Hkv, T, D], returns past + new [1, Hkv, P + T, D]."""
        self.new_keys, self.new_values = key_states, value_states
        return torch.cat((self.keys, key_states), dim=2), torch.cat((self.values, value_states), dim=2)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2] + query_length, 0

    def get_seq_length(self) -> int:
        return self.keys.shape[2]

    def get_max_length(self) -> int:
        return -1


class PastCache(Cache):
    """The traced graph's cache: the past of every layer, as graph inputs."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__(layers=[_PastLayer(k, v) for k, v in past])


class DecoderStep(nn.Module):
    """inputs_embeds, positions, additive mask, slot-major past K/V -> logits, features, new K/V.

    Args:
        adapter: the loaded target (a `dream_s_edge.targets.TargetAdapter`).
        feature_layers: hidden-state indices (HF convention, 0 = embeddings, L = post-norm)
            concatenated into `features`.
        logits_rows: logits only for the last `logits_rows` tokens (all when fewer): a verify step
            (at most node_budget tokens) gets all of its rows, a prefill only its tail, whose last
            row is all it needs; the LM head over every prompt position (T x V) is skipped.
            None: every row.
    """

    def __init__(self, adapter, feature_layers: tuple[int, ...], logits_rows: int | None = None):
        super().__init__()
        self.logits_rows = logits_rows
        self.language_model = adapter.language_model
        self.lm_head = adapter.model.lm_head
        self.feature_layers = feature_layers
        self.num_layers = adapter.spec.num_layers

    def forward(self, inputs_embeds, position_ids, attention_mask, *past):
        """Args as in `export/contract.py` (`decoder`); past is k0, v0, k1, v1, ... [1, P, Hkv, D]."""
        pairs = [(past[2 * i].transpose(1, 2), past[2 * i + 1].transpose(1, 2)) for i in range(self.num_layers)]
        cache = PastCache(pairs)
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=True,
            return_dict=True,
        )
        hidden = out.hidden_states
        features = torch.cat([hidden[i] for i in self.feature_layers], dim=-1)  # [1, T, F]
        presents = []
        for layer in cache.layers:
            presents += [layer.new_keys.transpose(1, 2), layer.new_values.transpose(1, 2)]  # [1, T, Hkv, D]
        last = out.last_hidden_state
        if self.logits_rows is not None:
            last = last[:, -self.logits_rows:]  # an ONNX Slice: clamps when new < logits_rows
        return (self.lm_head(last), features, *presents)


class VisionEncoder(nn.Module):
    """pixel_values [I, 3, s, s] (whole square images) -> image_embeds [I, N_img, H] after the connector.

    Idefics3 / SmolVLM layout: patch embedding, vision encoder, post-norm, pixel-shuffle connector,
    as `Idefics3Model.get_image_features` runs them for unpadded images of the tower's own size.
    For such images every patch is valid and the tower's fractional position ids reduce to
    0 .. patches - 1, so they are a constant here instead of data-dependent bucketing, and no
    attention mask is needed.
    """

    def __init__(self, adapter):
        super().__init__()
        model = adapter.model.model
        self.vision_model = model.vision_model
        self.connector = model.connector

    def forward(self, pixel_values):
        embeddings = self.vision_model.embeddings
        patches = embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [I, P, Hv]
        positions = torch.arange(patches.shape[1], device=pixel_values.device)
        hidden = patches + embeddings.position_embedding(positions)[None]
        hidden = self.vision_model.encoder(inputs_embeds=hidden, attention_mask=None).last_hidden_state
        hidden = self.vision_model.post_layernorm(hidden)
        return self.connector(hidden)  # [I, N_img, H]
