"""The cheap τ estimate: replay stored target continuations, so only the draft runs.

Place in the data flow::

    calibration prompts --record_target (target runs once per prompt, all candidate layers)--> TargetRecord
    TargetRecord x sub-network draft --estimate_tau--> TauEstimate (τ̂, accept_counts)  --> search/search.py

Under greedy decoding the target's output is its greedy continuation, whatever the draft proposes.
So the target's answer to any tree is known in advance from one autoregressive run: a node whose
path from the root spells the stored continuation gets the stored next token (as a one-hot row of
logits) and the stored feature of its position; any other node is rejected whatever its row says
(acceptance only looks below accepted nodes) and gets zeros. `ReplayTarget` answers `verify` that
way, and the ordinary loop (`runtime.decode.speculative_generate`) drives the draft against it: the
dynamic tree the draft builds at each position it reaches, and the accepted lengths, are those of
the real loop, and the only model that runs is the draft. Features are stored for every candidate
injection layer, so one recording serves every sub-network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.accept import GREEDY
from runtime.decode import speculative_generate
from runtime.errors import UserInputError
from runtime.runner import DraftRunner, PrefillResult, Prompt, RunnerLimits, TargetRunner, VerifyResult
from runtime.tree import TreeSpec


@dataclass(frozen=True)
class TargetRecord:
    """One prompt and the target's greedy continuation of it.

    Attributes:
        prompt: the tokenized request.
        layers: the recorded hidden-state indices (HF convention, resolved), in feature order.
        prefill: the target's prefill, features over every recorded layer [T, len(layers) * H].
        tokens: [A + 1] int64 greedy continuation; tokens[0] is chosen by the prefill logits.
        features: [A, len(layers) * H] float32 target features at positions T .. T + A - 1 (the
            feature of tokens[i] at position T + i).
    """

    prompt: Prompt
    layers: tuple[int, ...]
    prefill: PrefillResult
    tokens: np.ndarray
    features: np.ndarray


def record_target(target: TargetRunner, prompt: Prompt, layers: tuple[int, ...], steps: int) -> TargetRecord:
    """Runs the target autoregressively (greedy) for `steps` tokens and stores what replay needs.

    Args:
        target: a target runner emitting the features of `layers` (e.g. `TorchTargetRunner(...,
            feature_layers=layers)`), with room for T + steps tokens.
        prompt: the request.
        layers: the layers the runner emits, resolved (no -1).
        steps: continuation tokens to record; a replay of N new tokens with trees of depth D
            needs steps >= N + D + 1.
    """
    prefill = target.prefill(prompt)
    tokens = [int(np.argmax(prefill.logits))]
    features = []
    for _ in range(steps):
        out = target.verify(np.array([tokens[-1]], dtype=np.int64), np.array([target.length], dtype=np.int64),
                            np.ones((1, 1), dtype=bool))
        tokens.append(int(np.argmax(out.logits[0])))
        features.append(out.features[0])
        target.commit(np.zeros(1, dtype=np.int64))
    return TargetRecord(prompt, tuple(layers), prefill, np.array(tokens, dtype=np.int64),
                        np.stack(features).astype(np.float32))


class ReplayTarget:
    """A `TargetRunner` that answers from a `TargetRecord` (greedy decoding only).

    Args:
        record: the stored continuation.
        feature_layers: the layers the draft reads (a subset of `record.layers`, resolved).
        node_budget: the largest tree a verify call takes.
    """

    def __init__(self, record: TargetRecord, feature_layers: tuple[int, ...], node_budget: int):
        missing = [layer for layer in feature_layers if layer not in record.layers]
        if missing:
            raise UserInputError("The record does not hold the draft's feature layers.",
                                 f"draft reads {feature_layers}, record has {record.layers}",
                                 "record the target with every candidate injection layer")
        width = record.features.shape[1] // len(record.layers)
        self._columns = np.concatenate([np.arange(width) + record.layers.index(layer) * width
                                        for layer in feature_layers])
        self.record = record
        self.prompt_len = int(record.prompt.input_ids.shape[0])
        self.limits = RunnerLimits(self.prompt_len + record.features.shape[0], node_budget)
        self.vocab_size = int(record.prefill.logits.shape[0])
        self.feature_dim = int(self._columns.size)
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    def reset(self) -> None:
        self._length = 0

    def prefill(self, prompt: Prompt) -> PrefillResult:
        """The stored prefill, restricted to the draft's layers; commits T tokens."""
        p = self.record.prefill
        self._length = self.prompt_len
        return PrefillResult(p.logits, p.features[:, self._columns], p.inputs_embeds, p.visual_scores, p.visual_mask)

    def verify(self, tokens: np.ndarray, positions: np.ndarray, tree_mask: np.ndarray) -> VerifyResult:
        """Nodes on the stored path get its next token and feature; the rest get zeros."""
        n = int(tokens.shape[0])
        logits = np.zeros((n, self.vocab_size), dtype=np.float32)
        features = np.zeros((n, self.feature_dim), dtype=np.float32)
        stored = self.record.tokens
        index = np.full(n, -1)  # continuation index of each on-path node, -1 off the path
        index[0] = self._length - self.prompt_len
        for j in range(1, n):
            ancestors = np.flatnonzero(tree_mask[j, :j])
            parent = int(ancestors.max()) if ancestors.size else 0
            i = index[parent] + 1 if index[parent] >= 0 else -1
            if 0 < i < stored.shape[0] and int(tokens[j]) == int(stored[i]):
                index[j] = i
        for j in np.flatnonzero(index >= 0):
            i = int(index[j])
            if i + 1 < stored.shape[0] and i < self.record.features.shape[0]:
                logits[j, stored[i + 1]] = 1.0
                features[j] = self.record.features[i, self._columns]
        return VerifyResult(logits, features)

    def commit(self, accepted: np.ndarray) -> None:
        self._length += int(np.asarray(accepted).shape[0])


@dataclass
class TauEstimate:
    """τ̂ of one draft and tree over the records.

    Attributes:
        tau: tokens per target pass over all records.
        accept_counts: accept_counts[a] = passes that accepted a drafted tokens, summed over records.
        per_record: τ of each record.
    """

    tau: float
    accept_counts: list[int] = field(default_factory=list)
    per_record: list[float] = field(default_factory=list)


def estimate_tau(records: list[TargetRecord], draft: DraftRunner, feature_layers: tuple[int, ...],
                 tree: TreeSpec, max_new_tokens: int, eos_ids=()) -> TauEstimate:
    """Greedy τ of a draft and tree, replaying the records (only the draft runs).

    Args:
        records: recorded continuations, each with at least max_new_tokens + depth + 1 steps.
        draft: the draft runner (sized for `tree`).
        feature_layers: the draft's feature layers (its spec's, resolved).
        tree: the tree setting.
        max_new_tokens: tokens decoded per record.
        eos_ids: token ids that end a generation (as in the real loop).

    Raises:
        UserInputError: a record is too short for the requested decode.
    """
    counts = np.zeros(tree.depth + 1, dtype=np.int64)
    per_record = []
    for record in records:
        if record.features.shape[0] < max_new_tokens + tree.depth + 1:
            raise UserInputError("A target record is too short for this replay.",
                                 f"{record.features.shape[0]} steps < max_new_tokens {max_new_tokens} + depth "
                                 f"{tree.depth} + 1", "record more steps")
        target = ReplayTarget(record, feature_layers, tree.node_budget)
        result = speculative_generate(target, draft, record.prompt, tree, GREEDY, max_new_tokens, eos_ids)
        hist = result.metrics.accept_counts
        counts[: len(hist)] += hist
        per_record.append(result.metrics.tau)
    passes = max(int(counts.sum()), 1)
    tau = float((counts * (np.arange(counts.size) + 1)).sum() / passes)
    return TauEstimate(tau, counts.tolist(), per_record)
