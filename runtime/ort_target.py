"""`OrtTargetRunner`: the exported target (vision + decoder step + embedding table) on onnxruntime.

Implements `runtime.runner.TargetRunner`. Data flow of prefill::

    input_ids [T] --embedding table (npy)--> embeds [T, H]
    pixel_values [I, 3, s, s] --vision graph--> image embeds [I, N_img, H] --spliced at image tokens-->
    embeds, positions 0..T-1, causal mask --decoder graph--> logits, features, K/V -> cache slots 0..T-1

except that the first P tokens, the chat template's head shared with the previous prompt
(`runtime.prompt_head`), keep their slots and cached features: the decoder runs on P..T-1 only.

The decoder returns logits for its last min(T, node_budget) tokens only (`export/contract.py`; older
exports return all T): a verify gets every node's row, a prefill reads its last row.

verify writes the N tree nodes' K/V into slots `length .. length + N - 1` and `commit` moves the
accepted ones into place (`SlotKV`). Buffers, allocated once in the constructor:

  [1] KV cache: K and V `[L, S, Hkv, D]` OrtValues, S = max_context + node_budget; graphs read
      the committed prefix and write new slots by pointer.
  [2] verify outputs: logits `[N, V]` and features `[N, F]`, bound by pointer when a step has at
      most `node_budget` tokens (prefill lets onnxruntime allocate). Results handed back are
      copies, so callers may keep them.
"""

from __future__ import annotations

import logging

import numpy as np

from runtime.embedding import embed_prompt, lookup
from runtime.errors import CapacityError
from runtime.manifest import Manifest
from runtime.ort_backend import DeviceBuffer, OrtGraph, SlotKV
from runtime.prompt_head import HeadCache
from runtime.runner import PrefillResult, Prompt, RunnerLimits, VerifyResult

logger = logging.getLogger(__name__)

MASK_MIN = float(np.finfo(np.float32).min)


def additive_mask(past: int, block: np.ndarray) -> np.ndarray:
    """[1, 1, T, past + T] float32: every committed slot visible, then `block` [T, T] bool."""
    count = block.shape[0]
    mask = np.zeros((1, 1, count, past + count), dtype=np.float32)
    mask[0, 0, :, past:][~block] = MASK_MIN
    return mask


class OrtTargetRunner:
    """The target on onnxruntime (implements `runtime.runner.TargetRunner`).

    Args:
        manifest: the validated artifact manifest.
        provider: "cpu", "cuda" or "tensorrt".
        threads: intra-op threads per session (None: onnxruntime's default).
    """

    def __init__(self, manifest: Manifest, provider: str = "cpu", threads: int | None = None):
        target = manifest["target"]
        limits = manifest["limits"]
        self.limits = RunnerLimits(int(limits["max_context"]), int(limits["node_budget"]))
        self.vocab_size = int(target["vocab_size"])
        self.feature_dim = int(target["hidden_size"]) * len(manifest["feature_layers"])
        self.image_token_id = target.get("image_token_id")
        self.embeddings = np.load(manifest.path("embeddings"), mmap_mode="r")  # [V, H]
        self.decoder = OrtGraph(manifest.path("decoder"), "decoder", manifest.contract("decoder"), provider, threads)
        self.vision = None
        if manifest.has("vision"):
            self.vision = OrtGraph(manifest.path("vision"), "vision", manifest.contract("vision"), provider, threads)
        self._names = {  # role -> tensor name(s), as the manifest's contract spells them
            "past_key": self.decoder.names("inputs", "past_key"),
            "past_value": self.decoder.names("inputs", "past_value"),
            "present_key": self.decoder.names("outputs", "present_key"),
            "present_value": self.decoder.names("outputs", "present_value"),
        }
        for side, role in (("inputs", "inputs_embeds"), ("inputs", "position_ids"), ("inputs", "attention_mask"),
                           ("outputs", "logits"), ("outputs", "features")):
            self._names[role] = self.decoder.name(side, role)
        self._pixels = None if self.vision is None else self.vision.name("inputs", "pixel_values")
        slots = self.limits.max_context + self.limits.node_budget
        self.cache = SlotKV(int(target["num_layers"]), slots, int(target["num_kv_heads"]), int(target["head_dim"]),
                            self.decoder.device)
        budget = self.limits.node_budget
        self._logits = DeviceBuffer((budget, self.vocab_size), np.float32, "cpu")
        self._features = DeviceBuffer((budget, self.feature_dim), np.float32, "cpu")
        self.head = HeadCache()  # the last prompt's template head, still in the cache's first slots

    @property
    def length(self) -> int:
        """Committed tokens in the KV cache."""
        return self.cache.length

    def reset(self) -> None:
        """Forgets the committed tokens; keeps every buffer."""
        self.cache.reset()

    def prefill(self, prompt: Prompt) -> PrefillResult:
        """Consumes a prompt, produces its last logits and per-position features; commits T tokens.

        The template head shared with the previous prompt (`prompt.head`) is not run again: its
        K/V are still in the cache's first slots and its features in `self.head`.

        Raises:
            PromptError: image tokens and images disagree, or an image without a vision graph.
            CapacityError: the prompt does not fit the cache.
        """
        self.reset()
        ids = np.asarray(prompt.input_ids, dtype=np.int64)  # [T]
        count = int(ids.shape[0])
        if count > self.limits.max_context:
            raise CapacityError("The prompt does not fit the target's KV cache.",
                                note=f"{count} tokens, max_context {self.limits.max_context}")
        embeds = self._embed(ids, prompt.extras.get("pixel_values"))  # [T, H]
        kept = self.head.reusable(ids, prompt.head, self.image_token_id)
        head_features = self.head.features_for(kept) if kept else None  # [kept, F]
        self.head.clear()  # the pass below writes slots kept .. T - 1
        self.cache.length = kept
        causal = np.tril(np.ones((count - kept, count - kept), dtype=bool))
        logits, features = self._step(embeds[kept:], np.arange(kept, count, dtype=np.int64), causal)
        if kept:
            features = np.concatenate((head_features, features), axis=0)  # [T, F]
        self.head.store(ids, features, prompt.head)
        self.cache.length = count
        visual = None if self.image_token_id is None else ids == self.image_token_id
        return PrefillResult(
            logits=logits[-1].copy(),
            features=features,
            inputs_embeds=embeds,
            visual_mask=visual if visual is not None and visual.any() else None,
            reused=kept,
        )

    def verify(self, tokens: np.ndarray, positions: np.ndarray, tree_mask: np.ndarray) -> VerifyResult:
        """Consumes N tree nodes, produces their logits [N, V] and features [N, F] (copies)."""
        count = int(np.shape(tokens)[0])
        if count > self.limits.node_budget:
            raise CapacityError("The tree has more nodes than the target's buffers were sized for.",
                                note=f"{count} nodes, node budget {self.limits.node_budget}")
        embeds = self._lookup(np.asarray(tokens, dtype=np.int64))
        logits, features = self._step(embeds, np.asarray(positions, dtype=np.int64), np.asarray(tree_mask, bool))
        return VerifyResult(logits=logits.copy(), features=features.copy())

    def commit(self, accepted: np.ndarray) -> None:
        """Moves the accepted nodes' K/V to contiguous slots after the committed ones."""
        self.cache.commit(np.asarray(accepted, dtype=np.int64), self.cache.length)

    # ---- internals ----------------------------------------------------------------------
    def _lookup(self, ids: np.ndarray) -> np.ndarray:
        """Token embeddings [T, H] float32 from the exported table."""
        return lookup(self.embeddings, ids)

    def _embed(self, ids: np.ndarray, pixel_values: np.ndarray | None) -> np.ndarray:
        """Token embeddings with the image embeddings spliced in at the image tokens: [T, H]."""
        encode = (lambda pixels: self.vision.run({self._pixels: pixels})[0]) if self.vision is not None else None
        return embed_prompt(self.embeddings, ids, self.image_token_id, pixel_values, encode, "artifacts")

    def _step(self, embeds: np.ndarray, positions: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One decoder pass over T tokens at slots length .. length + T - 1: (logits [R, V] of the last
        R = min(T, node_budget) tokens (all T from older exports), features [T, F])."""
        past, count = self.cache.length, embeds.shape[0]
        self.cache.check_room(past, count)
        graph, cache = self.decoder, self.cache
        graph.clear()
        names = self._names
        graph.bind_array(names["inputs_embeds"], embeds[None])
        graph.bind_array(names["position_ids"], positions[None])
        graph.bind_array(names["attention_mask"], additive_mask(past, block))
        pooled = count <= self.limits.node_budget  # verify: into the preallocated output buffers
        if pooled:
            graph.bind_buffer(names["logits"], self._logits, 0, (1, count, self.vocab_size), True)
            graph.bind_buffer(names["features"], self._features, 0, (1, count, self.feature_dim), True)
        else:  # prefill: onnxruntime allocates (bound first, so they come first in the outputs)
            graph.bind_new_output(names["logits"])
            graph.bind_new_output(names["features"])
        kv_shape = (1, past, cache.heads, cache.dim)
        new_shape = (1, count, cache.heads, cache.dim)
        for layer in range(cache.layers):
            graph.bind_buffer(names["past_key"][layer], cache.k, cache.offset(layer, 0), kv_shape, False)
            graph.bind_buffer(names["past_value"][layer], cache.v, cache.offset(layer, 0), kv_shape, False)
            graph.bind_buffer(names["present_key"][layer], cache.k, cache.offset(layer, past), new_shape, True)
            graph.bind_buffer(names["present_value"][layer], cache.v, cache.offset(layer, past), new_shape, True)
        graph.run_bound()
        if pooled:
            return self._logits.array[:count], self._features.array[:count]
        logits, features = graph.binding.get_outputs()[:2]
        return logits.numpy()[0], features.numpy()[0]
