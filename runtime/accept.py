"""Acceptance: which drafted nodes the target agrees with, and the bonus token after them.

Place in the data flow: `target.verify(tree)` -> logits [N, V] -> `accept_tree` -> accepted node
indices (root first) + bonus token -> `target.commit`, `draft.advance`.

The rule is written once, in `accept_tree`; greedy decoding is its temperature-0 case. The logits
processors (temperature, top-p) live here too, so the first token, the autoregressive baseline and
the bonus token all use the same distribution as acceptance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import SpecMismatchError
from runtime.tree import TreeBuffers


@dataclass(frozen=True)
class SamplingConfig:
    """How the target's logits become the next token.

    Attributes:
        temperature: 0 for greedy decoding (argmax); otherwise logits are divided by it.
        top_p: nucleus size: keep the smallest set of most likely tokens whose mass reaches top_p
            (1.0 keeps everything). Ignored when greedy.
    """

    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0.0 < self.top_p <= 1.0:
            raise SpecMismatchError(
                "Sampling needs temperature >= 0 and 0 < top_p <= 1.",
                note=f"temperature={self.temperature}, top_p={self.top_p}",
            )

    @property
    def greedy(self) -> bool:
        """True when decoding takes the argmax."""
        return self.temperature == 0.0


GREEDY = SamplingConfig()


@dataclass(frozen=True)
class AcceptResult:
    """The outcome of one verify pass.

    Attributes:
        nodes: [A] int64 accepted node indices, root first, ascending depth (A >= 1).
        bonus: the token the target emits after the last accepted node.
    """

    nodes: np.ndarray
    bonus: int

    @property
    def accepted(self) -> int:
        """Drafted tokens accepted (A - 1); tokens emitted this pass = accepted + 1."""
        return int(self.nodes.shape[0]) - 1


def process_logits(logits: np.ndarray, sampling: SamplingConfig) -> np.ndarray:
    """Applies temperature and top-p to one row of logits.

    Args:
        logits: [V] float logits.
        sampling: a non-greedy SamplingConfig.

    Returns:
        [V] float64 probabilities summing to 1 (zeros outside the nucleus).
    """
    z = logits.astype(np.float64) / sampling.temperature  # [V]
    p = np.exp(z - z.max())
    p /= p.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        mass_before = np.cumsum(p[order]) - p[order]  # mass of strictly better tokens
        p[order[mass_before >= sampling.top_p]] = 0.0  # the top token always stays
        p /= p.sum()
    return p


def sample_from(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Draws an index with probability proportional to non-negative `weights` [V]."""
    cdf = np.cumsum(weights)
    u = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), weights.shape[0] - 1))


def sample_token(logits: np.ndarray, sampling: SamplingConfig, rng: np.random.Generator | None) -> int:
    """The next token from one row of logits [V]: argmax when greedy, else a processed sample."""
    if sampling.greedy:
        return int(np.argmax(logits))
    return sample_from(process_logits(logits, sampling), rng)


def _reject(residual: np.ndarray, token: int) -> None:
    """Removes a rejected token from the (unnormalised) residual distribution, in place."""
    residual[token] = 0.0


def _accept_greedy(tree: TreeBuffers, logits: np.ndarray) -> AcceptResult:
    """Longest path whose every token is the target argmax at its parent; bonus = argmax after it."""
    best = np.argmax(logits, axis=-1)  # [N] target choice after each node
    paths = tree.retrieve  # [P, D + 1]
    parent_nodes = paths[:, :-1]
    child_nodes = paths[:, 1:]
    match = (child_nodes >= 0) & (tree.tokens[child_nodes] == best[parent_nodes])  # [P, D]
    run = np.cumprod(match, axis=1).sum(axis=1)  # [P] accepted length of each path
    row = int(np.argmax(run))  # the first longest; a tree always has >= 1 path (the root alone)
    nodes = paths[row, : int(run[row]) + 1]
    return AcceptResult(nodes=nodes.astype(np.int64), bonus=int(best[nodes[-1]]))


def _accept_sampling(
    tree: TreeBuffers, logits: np.ndarray, sampling: SamplingConfig, rng: np.random.Generator
) -> AcceptResult:
    """Recursive rejection sampling over the distinct children of each accepted node."""
    nodes = [0]
    residual = process_logits(logits[0], sampling)  # [V] unnormalised residual r
    while True:
        accepted = None
        seen: set[int] = set()
        for child in tree.children(nodes[-1]):
            x = int(tree.tokens[child])
            if x in seen:  # a duplicate was already rejected: r(x) = 0
                continue
            seen.add(x)
            if rng.random() * residual.sum() < residual[x]:  # u < r(x) / sum(r)
                accepted = int(child)
                break
            _reject(residual, x)
        if accepted is None:
            return AcceptResult(nodes=np.array(nodes, dtype=np.int64), bonus=sample_from(residual, rng))
        nodes.append(accepted)
        residual = process_logits(logits[accepted], sampling)


def accept_tree(
    tree: TreeBuffers,
    logits: np.ndarray,
    sampling: SamplingConfig = GREEDY,
    rng: np.random.Generator | None = None,
) -> AcceptResult:
    """Accepts the longest run of drafted nodes the target agrees with, plus one bonus token.

    The rule (EAGLE / SpecInfer multi-draft speculative sampling; the draft's top-k proposals are
    deterministic, q(x) = 1 for each drafted child, so the ratio test min(1, p/q) is just p)::

        v <- root;  p <- P(logits[v])                      P = temperature, then top-p
        loop:
            for each distinct valid child c of v (node order), token x = tok(c):
                with probability p(x) / sum(p):  v <- c;  p <- P(logits[c]);  continue loop
                otherwise:                       p(x) <- 0        (residual, renormalised lazily)
            bonus ~ p / sum(p);  stop                     (no child left, or v is a leaf)

    Each step emits x with probability p(x) exactly, so the output is distributed as the target's
    (processed) distribution. Temperature 0 is the limit case: p is one-hot on argmax(logits[v]),
    which accepts the path whose tokens equal the target argmax at their parents, longest first,
    and emits bonus = argmax(logits[last accepted]).

    Args:
        tree: the verified tree (only valid nodes are considered).
        logits: [N, V] target logits; row j predicts the token after node j.
        sampling: temperature and top-p; greedy by default.
        rng: a seeded numpy Generator; required unless greedy.

    Returns:
        AcceptResult with the accepted node indices (root first) and the bonus token.
    """
    if logits.shape[0] != tree.size:
        raise SpecMismatchError(
            "Verify logits and tree disagree on the node count.",
            note=f"logits {logits.shape}, tree N = {tree.size}",
        )
    if sampling.greedy:
        return _accept_greedy(tree, logits)
    if rng is None:
        raise SpecMismatchError(
            "Sampling acceptance needs a random generator.", hint="Pass rng=np.random.default_rng(seed)."
        )
    return _accept_sampling(tree, logits, sampling, rng)
