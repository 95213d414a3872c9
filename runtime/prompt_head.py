"""Reusing the chat template's head across prompts: its KV stays in the target's cache.

Every prompt a `PromptBuilder` makes starts with the same tokens (the system turn and the user
turn's opening, about 30 tokens for SmolVLM, a quarter of a short image prompt). Their K/V and
features depend on nothing after them (causal attention, positions from 0), and the runners never
write below the committed length, so after one prefill the cache's first slots still hold them.
A target runner keeps those slots and prefills only the rest:

    prompt (ids [T], head h) + HeadCache (ids [h'], features [h', F]) of the previous prefill
      -> reusable(...) = P, the tokens both share, capped at h, the first image token and T - 1
      -> prefill runs on ids[P:] at positions P .. T - 1 with P slots already committed
      -> features [T, F] = cached [:P] + new; HeadCache.store(ids[:h], features[:h])

Only the head is reused, never the question or the image, so a prompt asked twice costs the same
each time, and autoregressive and speculative decoding of one prompt get the same prefill.
"""

from __future__ import annotations

import numpy as np


def shared_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading entries the 1-D arrays a and b have in common."""
    n = min(a.size, b.size)
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


class HeadCache:
    """The ids and features [h, F] of the last prefilled prompt's head (empty: nothing to reuse)."""

    def __init__(self):
        self.ids = np.zeros(0, dtype=np.int64)
        self.features: np.ndarray | None = None

    def clear(self) -> None:
        """Forgets the head (call before a pass that may overwrite the cache's first slots)."""
        self.ids = np.zeros(0, dtype=np.int64)
        self.features = None

    def reusable(self, ids: np.ndarray, head: int, image_token_id: int | None) -> int:
        """Tokens of `ids` [T] whose K/V and features the cache already holds.

        Capped at the prompt's head, before its first image token (image embeddings change per
        picture), and at T - 1, so the prefill still has a token to give the next-token logits.
        """
        limit = min(int(head), ids.size - 1)
        if image_token_id is not None:
            images = np.flatnonzero(ids[:limit] == image_token_id)
            limit = int(images[0]) if images.size else limit
        return shared_prefix(ids[:max(limit, 0)], self.ids) if self.features is not None else 0

    def store(self, ids: np.ndarray, features: np.ndarray, head: int) -> None:
        """Keeps the first `head` ids and features [head, F] of a prompt just prefilled."""
        head = min(int(head), ids.size)
        self.ids = np.array(ids[:head], dtype=np.int64)
        self.features = np.array(features[:head], dtype=np.float32)

    def features_for(self, count: int) -> np.ndarray:
        """The cached features of the first `count` head tokens: [count, F]."""
        return self.features[:count]
