"""One interface over the HF vision-language models the kit speculates on.

A `TargetAdapter` wraps a HF `...ForConditionalGeneration` model and its processor. Data flow:

    build_inputs(image, question)  -> input_ids [1, T] + the family's pixel keys
    encode_images(**pixels)        -> image embeddings [B, N_img, H] (after the connector)
    embed(input_ids, image_embeds) -> inputs_embeds [B, T, H] (images spliced in at image tokens)
    prompt_positions(inputs)       -> position ids of the prompt, rope delta of later tokens
    decoder_step(embeds, positions, cache, start, tree_mask)
                                   -> StepOutput (logits, hidden states, attention readouts)

`decoder_step` calls the real HF language-model submodule with a 4D mask built here (masks.py)
over a preallocated cache (kv_cache.py); it never reimplements attention. Families override a few
hooks: the language-model submodule, the pixel keys, mrope positions, mask rules.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from dream_s_edge.targets import masks, readouts
from dream_s_edge.targets.kv_cache import StaticKVCache
from dream_s_edge.targets.prompting import (
    adds_special_tokens,
    check_image,
    check_question,
    load_processor,
    render_prompt,
)
from runtime.errors import ModelLoadError, PromptError, SpecMismatchError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetSpec:
    """The target's shape, filled from its HF config."""

    family: str  # "smolvlm", "llava", "pixtral", "gemma3", "qwen2_vl", "qwen2_5_vl"
    num_layers: int  # L, decoder layers of the language model
    hidden_size: int  # H
    num_heads: int
    num_kv_heads: int  # Hkv, heads in the KV cache
    head_dim: int  # D
    vocab_size: int  # V
    max_position_embeddings: int
    image_token_id: int | None  # the placeholder id image embeddings replace
    eos_token_ids: tuple[int, ...]  # every id that ends an answer
    uses_mrope: bool  # Qwen multimodal rope: positions are [3, B, T] plus a rope delta
    sliding_window: int | None  # window of the sliding-attention layers, None if none slide


@dataclass(frozen=True)
class StepOutput:
    """What one decoder step returns.

    Attributes:
        logits: [B, T, V].
        hidden_states: requested layers, HF index convention: 0 = embeddings, i = after layer i,
            num_layers = after the final norm. Each [B, T, H].
        attention_entropy: [L, B, T] attention entropy per layer and query, mean over heads, or None.
        visual_attention: [B, S_visible] attention each visible key slot receives in the last layer,
            mean over heads, summed over the T queries, or None. S_visible = start + T.
    """

    logits: torch.Tensor
    hidden_states: dict[int, torch.Tensor]
    attention_entropy: torch.Tensor | None
    visual_attention: torch.Tensor | None


class TargetAdapter(ABC):
    """A HF VLM behind the interface the runners and the distillation code use."""

    model_class: ClassVar[str]  # transformers class that loads the folder
    pixel_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)  # build_inputs keys encode_images takes
    accepts_mask_mapping: ClassVar[bool] = False  # language model takes {"full_attention": ..., ...}
    family_names: ClassVar[tuple[str, ...]] = ()  # the families this adapter serves, default first

    def __init__(self, model: nn.Module, processor, spec: TargetSpec):
        self.model = model
        self.processor = processor
        self.spec = spec

    # --- loading -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
    ) -> TargetAdapter:
        """Loads a local model folder (never downloads).

        Raises:
            ModelLoadError: the folder is missing or its weights or config cannot be loaded.
        """
        import transformers

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"No config.json in {path}.", hint="pass a local HF model folder")
        model_cls = getattr(transformers, cls.model_class)
        try:
            model = model_cls.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"Cannot load {cls.model_class} from {path}.", note=str(error)) from error
        return cls.from_model(model.eval(), load_processor(path))

    @classmethod
    def from_model(cls, model: nn.Module, processor=None) -> TargetAdapter:
        """Wraps an already built HF model (tests, training code)."""
        tokenizer = getattr(processor, "tokenizer", None)
        return cls(model, processor, spec_from_model(cls.family_of(model.config), model, tokenizer))

    @classmethod
    def family_of(cls, config) -> str:
        """The family name this adapter gives a config (LLaVA tells Pixtral apart here)."""
        return cls.family_names[0]

    @property
    @abstractmethod
    def language_model(self) -> nn.Module:
        """The HF decoder submodule that takes inputs_embeds and a KV cache."""

    # --- prompt ----------------------------------------------------------------------------------

    def build_inputs(self, image, question: str) -> dict[str, torch.Tensor]:
        """Consumes a PIL image (or None) and a question, produces input_ids [1, T] plus the
        family's pixel keys, through the chat template (generation prompt included).

        Raises:
            PromptError: an empty question, or no processor.
            ImageError: an object that is not a PIL image, or an unusable mode.
        """
        question = check_question(question)
        image = check_image(image)
        if self.processor is None:
            raise PromptError(
                "This target was built without a processor.", hint="pass processor= to from_model"
            )
        text = render_prompt(self.processor, question, image is not None)
        inputs = self._process(text, image)
        inputs.pop("attention_mask", None)
        return inputs

    def _process(self, text: str, image) -> dict[str, torch.Tensor]:
        """Tokenizes the rendered prompt and preprocesses the image with the HF processor."""
        images = None if image is None else [image]
        special = adds_special_tokens(self.processor.tokenizer, text)
        return dict(
            self.processor(text=[text], images=images, add_special_tokens=special, return_tensors="pt")
        )

    # --- embeddings ------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, **pixel_inputs) -> torch.Tensor:
        """Consumes the family's pixel keys, produces image embeddings [B, N_img, H] after the connector."""
        kwargs = {k: v for k, v in pixel_inputs.items() if k in self.pixel_keys and v is not None}
        kwargs = {k: self._to_model(v) for k, v in kwargs.items()}
        features = self.model.model.get_image_features(**kwargs, return_dict=True).pooler_output
        if isinstance(features, (list, tuple)):
            features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
        batch = pixel_inputs["input_ids"].shape[0] if "input_ids" in pixel_inputs else 1
        return features.reshape(batch, -1, features.shape[-1])

    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Consumes input_ids [B, T] and image embeddings [B, N_img, H], produces inputs_embeds [B, T, H].

        Raises:
            PromptError: the prompt's image tokens and the image embeddings do not match in count.
        """
        ids = input_ids.to(self.device)
        table = self.text_embedding()
        embeds = table(ids.masked_fill(ids >= table.num_embeddings, 0))  # [B, T, H]
        if image_embeds is None:
            return embeds
        slots = ids == self.spec.image_token_id  # [B, T]
        count = int(slots.sum())
        if count * embeds.shape[-1] != image_embeds.numel():
            raise PromptError(
                "The prompt's image tokens do not match the image embeddings.",
                note=f"{count} image tokens, {image_embeds.numel() // embeds.shape[-1]} embeddings",
                hint="build the prompt and the pixels with the same build_inputs call",
            )
        return embeds.masked_scatter(slots[..., None], image_embeds.to(embeds.dtype))

    def text_embedding(self) -> nn.Embedding:
        """The text embedding table module (Gemma3's scales its output)."""
        return self.model.get_input_embeddings()

    def lm_head_weight(self) -> torch.Tensor:
        """The LM head weight [V, H]."""
        return self.model.lm_head.weight

    # --- cache and positions ---------------------------------------------------------------------

    def new_cache(self, max_len: int, batch_size: int = 1) -> StaticKVCache:
        """A KV cache of `max_len` slots, allocated once in the model's dtype and device."""
        spec = self.spec
        return StaticKVCache(
            spec.num_layers, batch_size, spec.num_kv_heads, max_len, spec.head_dim, self.dtype, self.device
        )

    def prompt_positions(self, inputs: dict) -> tuple[torch.Tensor, int]:
        """Position ids of the prompt [B, T] and the rope delta of later tokens (0 here)."""
        batch, length = inputs["input_ids"].shape
        return torch.arange(length, device=self.device).expand(batch, length), 0

    def positions_for(self, offsets: torch.Tensor, rope_delta: int) -> torch.Tensor:
        """Position ids [B, T] of text tokens at absolute offsets [B, T]."""
        return offsets.to(self.device) + rope_delta

    # --- the decoder step ------------------------------------------------------------------------

    @torch.no_grad()
    def decoder_step(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        cache: StaticKVCache,
        start: int,
        tree_mask: torch.Tensor | None = None,
        *,
        output_layers: tuple[int, ...] = (),
        output_entropy: bool = False,
        output_visual_attention: bool = False,
        prefill_inputs: dict | None = None,
    ) -> StepOutput:
        """Consumes T new tokens, writes their K/V at cache slots [start, start + T), produces StepOutput.

        Args:
            inputs_embeds: [B, T, H].
            position_ids: the family's format ([B, T], or [3, B, T] for mrope).
            cache: the adapter's StaticKVCache; slots [0, start) are committed.
            start: first slot written; the committed length for a verify step.
            tree_mask: [T, T] bool, row j True at j's ancestors and itself; None means causal.
            output_layers: hidden-state indices to return (0 = embeddings ... L = post-norm).
            output_entropy, output_visual_attention: attention readouts (eager attention only).
            prefill_inputs: build_inputs' dict when the step is the prompt (family mask rules).

        Raises:
            CapacityError: start + T exceeds the cache.
            SpecMismatchError: a bad tree mask or layer index, or readouts without eager attention.
        """
        batch, num_tokens, _ = inputs_embeds.shape
        need_attention = output_entropy or output_visual_attention
        self._check_step(num_tokens, tree_mask, output_layers, need_attention)
        cache.begin_step(start, num_tokens)
        visible = self._visibility(start, num_tokens, cache.max_len, tree_mask, prefill_inputs)
        depths = masks.step_depths(num_tokens, tree_mask, self.device)
        out = self.language_model(
            inputs_embeds=inputs_embeds.to(self.device, self.dtype),
            position_ids=position_ids.to(self.device),
            attention_mask=self._attention_mask(visible, start, depths, batch),
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=bool(output_layers),
            output_attentions=need_attention,
            return_dict=True,
        )
        attentions = out.attentions if need_attention else None
        return StepOutput(
            logits=self.model.lm_head(out.last_hidden_state),
            hidden_states={i: out.hidden_states[i] for i in output_layers},
            attention_entropy=readouts.attention_entropy(attentions) if output_entropy else None,
            visual_attention=(
                readouts.received_attention(attentions[-1], start + num_tokens)
                if output_visual_attention
                else None
            ),
        )

    def _check_step(self, num_tokens: int, tree_mask, output_layers, need_attention: bool) -> None:
        if tree_mask is not None and tuple(tree_mask.shape) != (num_tokens, num_tokens):
            raise SpecMismatchError(
                "The tree mask does not match the step.",
                note=f"mask {tuple(tree_mask.shape)}, {num_tokens} tokens",
            )
        bad = [i for i in output_layers if not 0 <= i <= self.spec.num_layers]
        if bad:
            raise SpecMismatchError(
                f"Hidden-state layers {bad} out of range.", note=f"valid: 0..{self.spec.num_layers}"
            )
        implementation = self.language_model.config._attn_implementation
        if need_attention and implementation != "eager":
            raise SpecMismatchError(
                "Attention entropy and visual attention need the attention maps.",
                note=f"the target runs attn_implementation={implementation!r}, which returns none",
                hint="load the target with attn_implementation='eager'",
            )

    def _visibility(
        self, start: int, num_tokens: int, max_len: int, tree_mask, prefill_inputs
    ) -> torch.Tensor:
        """Bool [T, S_max] visibility before window rules; families add their own."""
        return masks.visibility(start, num_tokens, max_len, tree_mask, self.device)

    def _attention_mask(self, visible: torch.Tensor, start: int, depths: torch.Tensor, batch: int):
        """The 4D additive mask, or {"full_attention", "sliding_attention"} masks for mapping models."""
        window = self.spec.sliding_window
        layer_types = getattr(self.model.config.get_text_config(), "layer_types", None) or ()
        if self.accepts_mask_mapping:
            mapping = {"full_attention": masks.additive(visible, batch, self.dtype)}
            if "sliding_attention" in layer_types:
                windowed = masks.within_window(visible, start, depths, window)
                mapping["sliding_attention"] = masks.additive(windowed, batch, self.dtype)
            return mapping
        if window is not None:  # Mistral-style: every layer slides
            visible = masks.within_window(visible, start, depths, window)
        return masks.additive(visible, batch, self.dtype)

    # --- small helpers ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def _to_model(self, value: torch.Tensor) -> torch.Tensor:
        """Moves a tensor to the model's device; floating tensors also to its dtype."""
        if torch.is_floating_point(value):
            return value.to(self.device, self.dtype)
        return value.to(self.device)


def spec_from_model(family: str, model: nn.Module, tokenizer=None) -> TargetSpec:
    """Reads a TargetSpec off a HF VLM's config (and its tokenizer's eos)."""
    config = model.config
    text = config.get_text_config()
    num_heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // num_heads
    image_token_id = getattr(config, "image_token_id", None)
    if image_token_id is None:
        image_token_id = getattr(config, "image_token_index", None)
    return TargetSpec(
        family=family,
        num_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        num_heads=num_heads,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or num_heads,
        head_dim=head_dim,
        vocab_size=text.vocab_size,
        max_position_embeddings=text.max_position_embeddings,
        image_token_id=image_token_id,
        eos_token_ids=tuple(i for i in _eos_ids(model, text, tokenizer) if i < text.vocab_size),
        uses_mrope=family in ("qwen2_vl", "qwen2_5_vl"),
        sliding_window=_sliding_window(text),
    )


def _eos_ids(model: nn.Module, text_config, tokenizer) -> tuple[int, ...]:
    """Every end id: generation config's, then the text config's, then the tokenizer's."""
    generation = getattr(model, "generation_config", None)
    sources = [getattr(generation, "eos_token_id", None), getattr(text_config, "eos_token_id", None)]
    sources.append(getattr(tokenizer, "eos_token_id", None))
    ids: list[int] = []
    for source in sources:
        for value in source if isinstance(source, (list, tuple)) else [source]:
            if value is not None and int(value) not in ids:
                ids.append(int(value))
    return tuple(ids)


def _sliding_window(text_config) -> int | None:
    """The window, if any layer slides (layer_types), or the model slides everywhere (Mistral)."""
    window = getattr(text_config, "sliding_window", None)
    layer_types = getattr(text_config, "layer_types", None)
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return int(window)
