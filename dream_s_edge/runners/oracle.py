"""`OracleDraftRunner`: the target itself as a draft, for tests and for upper bounds on τ.

It implements `runtime.runner.DraftRunner` by running the target over the tree being drafted,
reusing the target runner's committed KV cache: each call writes the root and the drafted nodes
after the committed slots (where the next `verify` overwrites them) and never commits. Its greedy
proposals are the target's own argmax, so a greedy chain or tree reaches τ = depth + 1.
"""

from __future__ import annotations

import numpy as np

from dream_s_edge.runners.target_torch import TorchTargetRunner
from runtime.runner import PrefillResult, Proposal, RunnerLimits


def _greedy_top_k(logits: np.ndarray, k: int, epsilon: float) -> Proposal:
    """Top-k of each row of logits [n, V], scored as a greedy draft would: the argmax gets
    probability 1 - epsilon, and the others share epsilon in proportion to the target's own."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # [n, V]
    ids = np.argsort(-logprobs, axis=-1, kind="stable")[:, :k]  # [n, K]
    top = np.take_along_axis(logprobs, ids, -1)  # [n, K]
    rest = top[:, 1:] - np.log1p(-np.exp(top[:, :1]) + 1e-30)  # log p(x | not argmax)
    scores = np.concatenate([np.full_like(top[:, :1], np.log1p(-epsilon)), np.log(epsilon) + rest], axis=1)
    return Proposal(token_ids=ids.astype(np.int64), logprobs=scores.astype(np.float32))


class OracleDraftRunner:
    """Drafts with the target's own distribution (exact, and as slow as the target).

    Args:
        target: the target runner whose cache holds the committed prefix.
        max_depth: deepest tree the caller will draft.
        epsilon: probability mass left off the argmax when scoring; a small value makes the
            target's greedy path outscore every other in a dynamic tree, so it always survives.
    """

    def __init__(self, target: TorchTargetRunner, max_depth: int, epsilon: float = 1e-6):
        self.target = target
        self.epsilon = epsilon
        self.limits = RunnerLimits(target.limits.max_context, target.limits.node_budget, max_depth)
        self._root = 0
        self._nodes: dict[int, tuple[int, int, tuple[int, ...]]] = {}  # slot -> (token, position, ancestor slots)

    def reset(self) -> None:
        """Forgets the tree; the target runner owns the committed state."""
        self._nodes.clear()

    def prefill(self, result: PrefillResult, input_ids: np.ndarray, root: int, top_k: int) -> Proposal:
        """Consumes the first root; produces the target's top-k continuations of it."""
        return self._start_round(root, top_k)

    def advance(self, tokens: np.ndarray, features: np.ndarray, top_k: int) -> Proposal:
        """Consumes the accepted tokens (already committed in the target) and the new root."""
        return self._start_round(int(tokens[-1]), top_k)

    def tree_step(
        self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray, tree_mask: np.ndarray, top_k: int
    ) -> Proposal:
        """Runs the root, every ancestor and the n nodes through the target; returns [n, K]."""
        for token, position, slot, row in zip(tokens, positions, slots, tree_mask, strict=True):
            ancestors = tuple(int(s) for s in np.flatnonzero(row) if s != slot)
            self._nodes[int(slot)] = (int(token), int(position), ancestors)
        order = sorted({int(a) for s in slots for a in self._nodes[int(s)][2]} | {int(s) for s in slots})
        index = {slot: i + 1 for i, slot in enumerate(order)}  # 0 is the root
        count = len(order) + 1
        ids = np.array([self._root] + [self._nodes[s][0] for s in order], dtype=np.int64)  # [U]
        pos = np.array([self.target.length] + [self._nodes[s][1] for s in order], dtype=np.int64)  # [U]
        mask = np.zeros((count, count), dtype=bool)  # [U, U]
        mask[:, 0] = True
        for slot in order:
            row = index[slot]
            mask[row, row] = True
            mask[row, [index[a] for a in self._nodes[slot][2]]] = True
        logits = self.target.verify(ids, pos, mask).logits  # [U, V]
        return _greedy_top_k(logits[[index[int(s)] for s in slots]], top_k, self.epsilon)

    def _start_round(self, root: int, top_k: int) -> Proposal:
        """Records the root and returns the target's top-k after it."""
        self._root = int(root)
        self._nodes.clear()
        position = np.array([self.target.length], dtype=np.int64)
        logits = self.target.verify(np.array([self._root], dtype=np.int64), position, np.ones((1, 1), bool)).logits
        return _greedy_top_k(logits, top_k, self.epsilon)
