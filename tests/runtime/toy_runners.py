"""Tiny numpy runners for testing the speculative loop on CPU.

`ToyLM` is a random 2-layer single-head attention language model (float64) over a real `KVCache`:
the second layer's K/V depend on the context, so a wrong tree mask, position or KV commit changes
the logits. `ToyTarget` and `ToyDraft` implement the runner protocols over it; `RandomDraft` proposes
noise. A draft built from the target's own weights is an oracle (every greedy draft token right).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.kv_cache import KVCache, KVCacheSpec
from runtime.runner import PrefillResult, Prompt, Proposal, RunnerLimits, VerifyResult

LAYERS = 2


@dataclass(frozen=True)
class ToyWeights:
    """Weights of a ToyLM: embedding [V, D], per-layer q/k/v/o/mlp [L, D, D], head [D, V]."""

    embed: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    w1: np.ndarray
    w2: np.ndarray
    head: np.ndarray

    @classmethod
    def random(cls, vocab: int = 48, dim: int = 16, seed: int = 0) -> ToyWeights:
        rng = np.random.default_rng(seed)

        def mat(*shape: int, scale: float = 1.0) -> np.ndarray:
            return rng.normal(size=shape) * scale / np.sqrt(shape[-2] if len(shape) > 1 else 1)

        return cls(
            embed=rng.normal(size=(vocab, dim)),
            wq=mat(LAYERS, dim, dim, scale=2.0),
            wk=mat(LAYERS, dim, dim, scale=2.0),
            wv=mat(LAYERS, dim, dim),
            wo=mat(LAYERS, dim, dim),
            w1=mat(LAYERS, dim, dim),
            w2=mat(LAYERS, dim, dim),
            head=mat(dim, vocab, scale=3.0),
        )

    def perturbed(self, scale: float, seed: int) -> ToyWeights:
        """A copy with Gaussian noise on every weight: a partially-correct draft."""
        rng = np.random.default_rng(seed)
        fields = {name: w + scale * rng.normal(size=w.shape) * w.std() for name, w in vars(self).items()}
        return ToyWeights(**fields)


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)


def _pos(positions: np.ndarray, dim: int) -> np.ndarray:
    """[n, D] sinusoidal position embeddings."""
    freq = 1.0 / (10.0 ** (np.arange(dim // 2) / (dim // 2)))
    angle = positions[:, None] * freq[None, :]
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=-1)


class ToyLM:
    """The model over one KV cache; `forward` writes K/V at given slots and attends where allowed."""

    def __init__(self, weights: ToyWeights, cache_slots: int):
        self.w = weights
        self.dim = weights.embed.shape[1]
        self.vocab = weights.embed.shape[0]
        spec = KVCacheSpec(LAYERS, 1, self.dim, max_context=cache_slots, node_budget=0, dtype="float64")
        self.cache = KVCache(spec)

    def forward(
        self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray, visible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits [n, V] and features [n, D]; visible [n, S_cache] bool, each row includes its slot."""
        x = self.w.embed[tokens] + _pos(positions.astype(np.float64), self.dim)  # [n, D]
        for i in range(LAYERS):
            h = _norm(x)
            k_cache, v_cache = self.cache.layer(i)  # [1, 1, S, D]
            k_cache[0, 0, slots] = h @ self.w.wk[i]
            v_cache[0, 0, slots] = h @ self.w.wv[i]
            scores = (h @ self.w.wq[i]) @ k_cache[0, 0].T / np.sqrt(self.dim)  # [n, S]
            scores = np.where(visible, scores, -np.inf)
            att = np.exp(scores - scores.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            x = x + (att @ v_cache[0, 0]) @ self.w.wo[i]
            x = x + np.tanh(_norm(x) @ self.w.w1[i]) @ self.w.w2[i]
        feats = _norm(x)
        return feats @ self.w.head, feats

    def causal(self, tokens: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
        """Runs tokens at positions/slots start.. causally over the committed prefix; commits them."""
        n = tokens.shape[0]
        slots = start + np.arange(n)
        visible = np.arange(self.cache.capacity)[None, :] <= slots[:, None]
        out = self.forward(tokens, slots, slots, visible)
        self.cache.length = start + n
        return out


def _top_k(logits: np.ndarray, k: int) -> Proposal:
    """[n, K] best ids and their log-softmax values."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ids = np.argsort(-logp, axis=-1, kind="stable")[:, :k]
    return Proposal(ids.astype(np.int64), np.take_along_axis(logp, ids, -1).astype(np.float32))


class ToyTarget:
    """A TargetRunner over a ToyLM; the cache holds max_context + node_budget slots."""

    def __init__(self, weights: ToyWeights, max_context: int = 160, node_budget: int = 64):
        self.limits = RunnerLimits(max_context=max_context, node_budget=node_budget)
        self.model = ToyLM(weights, max_context + node_budget)
        self.vocab_size = self.model.vocab
        self.feature_dim = self.model.dim
        self.verify_sizes: list[int] = []

    @property
    def cache(self) -> KVCache:
        return self.model.cache

    @property
    def length(self) -> int:
        return self.cache.length

    def reset(self) -> None:
        self.cache.reset()
        self.verify_sizes.clear()

    def prefill(self, prompt: Prompt) -> PrefillResult:
        logits, feats = self.model.causal(prompt.input_ids, 0)
        return PrefillResult(logits=logits[-1], features=feats)

    def verify(self, tokens: np.ndarray, positions: np.ndarray, tree_mask: np.ndarray) -> VerifyResult:
        n, length = tokens.shape[0], self.length
        assert tree_mask.shape == (n, n) and tree_mask.dtype == bool
        assert positions[0] == length, "the root sits at the committed length"
        assert length + n <= self.cache.capacity
        self.verify_sizes.append(n)
        visible = np.zeros((n, self.cache.capacity), dtype=bool)
        visible[:, :length] = True
        visible[:, length : length + n] = tree_mask
        logits, feats = self.model.forward(tokens, positions, length + np.arange(n), visible)
        return VerifyResult(logits=logits, features=feats)

    def commit(self, accepted: np.ndarray) -> None:
        self.cache.commit(accepted, self.length)


class ToyDraft:
    """A DraftRunner over a ToyLM (features are checked for shape, not used)."""

    def __init__(self, weights: ToyWeights, max_context: int = 161, scratch: int = 64, max_depth: int = 8):
        self.limits = RunnerLimits(max_context=max_context, node_budget=scratch, max_depth=max_depth)
        self.model = ToyLM(weights, max_context + scratch)
        self.max_context = max_context
        self.step_widths: list[int] = []

    def reset(self) -> None:
        self.model.cache.reset()
        self.step_widths.clear()

    def prefill(self, result: PrefillResult, input_ids: np.ndarray, root: int, top_k: int) -> Proposal:
        assert result.features.shape[0] == input_ids.shape[0]
        logits, _ = self.model.causal(np.append(input_ids, root), 0)
        return _top_k(logits[-1:], top_k)

    def advance(self, tokens: np.ndarray, features: np.ndarray, top_k: int) -> Proposal:
        assert features.shape == (tokens.shape[0], self.model.dim), "one feature per token"
        logits, _ = self.model.causal(tokens, self.model.cache.length)
        return _top_k(logits[-1:], top_k)

    def tree_step(
        self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray, tree_mask: np.ndarray, top_k: int
    ) -> Proposal:
        self.step_widths.append(tokens.shape[0])
        length = self.model.cache.length
        assert np.all(positions > length - 1), "tree nodes sit after the root"
        visible = np.zeros((tokens.shape[0], self.model.cache.capacity), dtype=bool)
        visible[:, :length] = True
        visible[:, self.max_context : self.max_context + tree_mask.shape[1]] = tree_mask
        logits, _ = self.model.forward(tokens, positions, self.max_context + slots, visible)
        return _top_k(logits, top_k)


class RandomDraft:
    """A DraftRunner proposing random tokens (best-first log-probs), seeded."""

    def __init__(
        self, vocab: int, seed: int = 0, max_context: int = 161, scratch: int = 64, max_depth: int = 8
    ):
        self.limits = RunnerLimits(max_context=max_context, node_budget=scratch, max_depth=max_depth)
        self.vocab = vocab
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def _propose(self, n: int, k: int) -> Proposal:
        ids = np.stack([self.rng.choice(self.vocab, k, replace=False) for _ in range(n)])
        logp = -np.sort(self.rng.exponential(size=(n, k)), axis=-1)
        return Proposal(ids.astype(np.int64), logp.astype(np.float32))

    def prefill(self, result, input_ids, root, top_k):
        return self._propose(1, top_k)

    def advance(self, tokens, features, top_k):
        return self._propose(1, top_k)

    def tree_step(self, tokens, positions, slots, tree_mask, top_k):
        return self._propose(tokens.shape[0], top_k)
