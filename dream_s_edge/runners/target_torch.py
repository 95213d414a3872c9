"""`TorchTargetRunner`: a target adapter behind the runtime's `TargetRunner` interface.

The runner owns one static KV cache, allocated in the constructor for `max_context + node_budget`
slots and reused for every request. Arrays cross the boundary as numpy; tensors stay inside.
"""

from __future__ import annotations

import numpy as np
import torch

from dream_s_edge.targets.base import TargetAdapter
from runtime.errors import CapacityError
from runtime.runner import PrefillResult, Prompt, RunnerLimits, VerifyResult


class TorchTargetRunner:
    """Runs prefill, tree verification and KV commits on a PyTorch target adapter.

    Args:
        adapter: the loaded target.
        limits: buffer sizes (context and node budget).
        feature_layers: hidden-state indices (HF convention: 0 = embeddings, i = after layer i,
            num_layers = post-final-norm) concatenated into the features the draft reads.
        visual_attention: whether prefill measures the attention each position receives in the
            last layer (needed for visual-token compression; needs eager attention).
    """

    def __init__(
        self,
        adapter: TargetAdapter,
        limits: RunnerLimits,
        feature_layers: tuple[int, ...] = (-1,),
        visual_attention: bool = False,
    ):
        self.adapter = adapter
        self.limits = limits
        num_layers = adapter.spec.num_layers
        self.feature_layers = tuple(num_layers if i == -1 else i for i in feature_layers)
        self.visual_attention = visual_attention
        self.vocab_size = adapter.spec.vocab_size
        self.feature_dim = adapter.spec.hidden_size * len(self.feature_layers)
        self.cache = adapter.new_cache(limits.max_context + limits.node_budget)
        self._rope_delta = 0

    @property
    def length(self) -> int:
        """Committed tokens in the KV cache."""
        return self.cache.length

    def reset(self) -> None:
        """Forgets the committed tokens; keeps the cache buffers."""
        self.cache.reset()
        self._rope_delta = 0

    @torch.inference_mode()
    def prefill(self, prompt: Prompt) -> PrefillResult:
        """Consumes a prompt, produces its last logits and per-position features; commits T tokens."""
        self.reset()
        inputs = {name: torch.from_numpy(np.asarray(value)) for name, value in prompt.extras.items()}
        input_ids = torch.from_numpy(np.asarray(prompt.input_ids, dtype=np.int64))[None]  # [1, T]
        self._check_room(input_ids.shape[1])
        inputs["input_ids"] = input_ids
        image_embeds = self._image_embeds(inputs)
        embeds = self.adapter.embed(input_ids, image_embeds)  # [1, T, H]
        positions, self._rope_delta = self.adapter.prompt_positions(inputs)
        out = self.adapter.decoder_step(
            embeds,
            positions,
            self.cache,
            start=0,
            output_layers=self.feature_layers,
            output_visual_attention=self.visual_attention,
            prefill_inputs=inputs,
        )
        self.cache.advance(0, input_ids.shape[1])
        visual_mask = self._visual_mask(input_ids)
        return PrefillResult(
            logits=out.logits[0, -1].float().cpu().numpy(),
            features=self._features(out)[0],
            inputs_embeds=embeds[0].float().cpu().numpy(),
            visual_scores=None if out.visual_attention is None else out.visual_attention[0].float().cpu().numpy(),
            visual_mask=visual_mask,
        )

    @torch.inference_mode()
    def verify(self, tokens: np.ndarray, positions: np.ndarray, tree_mask: np.ndarray) -> VerifyResult:
        """Consumes N tree nodes, produces their logits [N, V] and features [N, F]."""
        count = int(tokens.shape[0])
        if count > self.limits.node_budget:
            raise CapacityError(
                "The tree has more nodes than the target's buffers were sized for.",
                note=f"{count} nodes, node budget {self.limits.node_budget}",
                hint="lower the tree's node budget or build the runner with a larger one",
            )
        self._check_room(count)
        ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None]  # [1, N]
        offsets = torch.from_numpy(np.asarray(positions, dtype=np.int64))[None]  # [1, N]
        embeds = self.adapter.embed(ids)
        out = self.adapter.decoder_step(
            embeds,
            self.adapter.positions_for(offsets, self._rope_delta),
            self.cache,
            start=self.length,
            tree_mask=torch.from_numpy(np.asarray(tree_mask, dtype=bool)),
            output_layers=self.feature_layers,
        )
        return VerifyResult(logits=out.logits[0].float().cpu().numpy(), features=self._features(out)[0])

    def commit(self, accepted: np.ndarray) -> None:
        """Moves the accepted nodes' K/V to contiguous slots after the committed ones."""
        index = np.asarray(accepted, dtype=np.int64)
        if np.array_equal(index, np.arange(index.shape[0])):  # a chain: the slots are already in place
            self.cache.advance(self.length, index.shape[0])
        else:
            self.cache.commit(self.length, torch.from_numpy(index))

    def _image_embeds(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Encodes the prompt's images, if any."""
        pixel_keys = {k: v for k, v in inputs.items() if k != "input_ids" and k.startswith(("pixel", "image"))}
        if "pixel_values" not in pixel_keys:
            return None
        return self.adapter.encode_images(**pixel_keys)

    def _visual_mask(self, input_ids: torch.Tensor) -> np.ndarray | None:
        """[T] True at image-token positions, or None without images."""
        image_token = self.adapter.spec.image_token_id
        if image_token is None:
            return None
        mask = (input_ids[0] == image_token).numpy()
        return mask if mask.any() else None

    def _features(self, out) -> np.ndarray:
        """Concatenates the requested hidden states: [B, T, K * H] float32."""
        parts = [out.hidden_states[i] for i in self.feature_layers]
        return torch.cat(parts, dim=-1).float().cpu().numpy()

    def _check_room(self, count: int) -> None:
        """Refuses tokens beyond the context the cache was sized for."""
        if self.length + count > self.limits.max_context + self.limits.node_budget:
            raise CapacityError(
                "The request does not fit the target's KV cache.",
                note=f"{self.length} committed + {count} new > {self.limits.max_context} context",
                hint="shorten the prompt, lower --max-new-tokens, or raise --max-context",
            )
