"""Acceptance: greedy vs a brute-force oracle; sampling preserves the target distribution (chi-square)."""

from __future__ import annotations

import numpy as np
import pytest

import runtime.accept as accept_mod
from runtime.accept import SamplingConfig, accept_tree, process_logits, sample_from
from runtime.errors import SpecMismatchError
from runtime.tree import tree_buffers

V = 6
DRAWS = 10_000
Z_999 = 3.0902  # standard normal 0.999 quantile


def chi2_critical(df: int, z: float = Z_999) -> float:
    """Upper 0.999 quantile of chi-square(df), Wilson-Hilferty approximation (within ~1% for df >= 10).

    For df = 35 this gives 66.6 (exact: 66.62).
    """
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * np.sqrt(c)) ** 3


# ---------------------------------------------------------------------------------------------
# Greedy
# ---------------------------------------------------------------------------------------------


def _random_tree(rng: np.random.Generator, n: int, vocab: int, invalid: int):
    parents = np.array([-1] + [int(rng.integers(0, j)) for j in range(1, n - invalid)] + [0] * invalid)
    tokens = rng.integers(0, vocab, size=n)
    valid = np.arange(n) < n - invalid
    depth = np.zeros(n, dtype=int)
    for j in range(1, n):
        depth[j] = depth[parents[j]] + 1
    return tree_buffers(tokens, parents, np.zeros(n), valid, int(depth.max()))


def _path_logits(tree, vocab: int) -> np.ndarray:
    """[N, vocab] logits as a function of each node's token path, as a real target's would be
    (duplicate siblings then agree, so which duplicate is taken cannot change the output)."""
    rows = []
    for j in range(tree.size):
        path, k = [], j
        while k >= 0:
            path.append(int(tree.tokens[k]))
            k = int(tree.parents[k])
        rows.append(np.random.default_rng(abs(hash(tuple(path))) % 2**32).normal(size=vocab))
    return np.stack(rows)


def _greedy_oracle(tree, logits) -> tuple[list[int], int]:
    """Longest chain of argmax-matching valid children, by recursion; returns (tokens, bonus)."""
    best = logits.argmax(-1)

    def longest(v: int) -> list[int]:
        runs = [
            [c] + longest(c)
            for c in range(tree.size)
            if tree.valid[c] and tree.parents[c] == v and tree.tokens[c] == best[v]
        ]
        return max(runs, key=len, default=[])

    chain = longest(0)
    last = chain[-1] if chain else 0
    return [int(tree.tokens[c]) for c in chain], int(best[last])


def test_greedy_matches_oracle_on_random_trees() -> None:
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(300):
        tree = _random_tree(rng, n=int(rng.integers(1, 20)), vocab=3, invalid=0)
        logits = _path_logits(tree, 3)
        out = accept_tree(tree, logits)
        tokens, bonus = _greedy_oracle(tree, logits)
        assert [int(t) for t in tree.tokens[out.nodes[1:]]] == tokens and out.bonus == bonus
        assert out.nodes[0] == 0 and all(
            tree.parents[b] == a for a, b in zip(out.nodes[:-1], out.nodes[1:], strict=True)
        )
        lengths.append(out.accepted)
    assert max(lengths) >= 3, "the test trees must exercise long accepted runs"


def test_greedy_ignores_invalid_nodes() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        tree = _random_tree(rng, n=12, vocab=3, invalid=4)
        logits = _path_logits(tree, 3)
        out = accept_tree(tree, logits)
        assert tree.valid[out.nodes].all()
        assert [int(t) for t in tree.tokens[out.nodes[1:]]] == _greedy_oracle(tree, logits)[0]


def test_logits_row_count_checked() -> None:
    tree = _random_tree(np.random.default_rng(0), 5, 3, 0)
    with pytest.raises(SpecMismatchError):
        accept_tree(tree, np.zeros((4, 3)))


# ---------------------------------------------------------------------------------------------
# Processors
# ---------------------------------------------------------------------------------------------


def test_top_p_and_temperature() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    np.testing.assert_allclose(process_logits(logits, SamplingConfig(1.0, 0.6)), [0.625, 0.375, 0.0])
    np.testing.assert_allclose(process_logits(logits, SamplingConfig(1.0, 0.5)), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(process_logits(logits, SamplingConfig(1.0, 1.0)), [0.5, 0.3, 0.2])
    hot = process_logits(logits, SamplingConfig(2.0))
    np.testing.assert_allclose(hot, np.sqrt([0.5, 0.3, 0.2]) / np.sqrt([0.5, 0.3, 0.2]).sum())
    with pytest.raises(SpecMismatchError):
        SamplingConfig(temperature=1.0, top_p=0.0)


def test_sample_from_skips_zero_weights() -> None:
    rng = np.random.default_rng(0)
    w = np.array([0.0, 0.3, 0.0, 0.7, 0.0])
    draws = [sample_from(w, rng) for _ in range(2000)]
    assert set(draws) == {1, 3}


# ---------------------------------------------------------------------------------------------
# Sampling preserves the target distribution
# ---------------------------------------------------------------------------------------------
#
#   root ─┬─ [1] tok 2 ─┬─ [4] tok 0          node logits: root L0, depth-1 node with token t -> C[t],
#         │             └─ [5] tok 3          depth 2 anything, invalid [7] a decoy (one-hot-ish)
#         ├─ [2] tok 4 ─── [6] tok 5
#         ├─ [3] tok 2   (duplicate of [1])
#         └─ [7] tok 1   (invalid padding)
#
# The first two emitted tokens (y1, y2) must follow P(y1) P(y2 | y1) with P = processed target. When
# a round emits only y1, y2 is what the next round would sample: a draw from P(. | y1).

TOKENS = np.array([9, 2, 4, 2, 0, 3, 5, 1])
PARENTS = np.array([-1, 0, 0, 0, 1, 1, 2, 0])
VALID = np.array([True] * 7 + [False])


def _setup():
    rng = np.random.default_rng(42)
    root_logits = rng.normal(size=V)
    cond = rng.normal(size=(V, V))  # [V, V] logits of the token after y1
    logits = np.zeros((8, V))
    logits[0] = root_logits
    for j in (1, 2, 3):
        logits[j] = cond[TOKENS[j]]
    logits[4:7] = rng.normal(size=(3, V))
    logits[7] = np.array([8.0, 0, 0, 0, 0, 0])  # decoy: would bias y2 to 0 after y1 = 1
    tree = tree_buffers(TOKENS, PARENTS, np.zeros(8), VALID, max_depth=2)
    return tree, logits, root_logits, cond


def _chi2(sampling: SamplingConfig, seed: int) -> tuple[float, float]:
    tree, logits, root_logits, cond = _setup()
    rng = np.random.default_rng(seed)
    counts = np.zeros((V, V))
    for _ in range(DRAWS):
        out = accept_tree(tree, logits, sampling, rng)
        emitted = [int(t) for t in tree.tokens[out.nodes[1:]]] + [out.bonus]
        if len(emitted) == 1:
            emitted.append(sample_from(process_logits(cond[emitted[0]], sampling), rng))
        counts[emitted[0], emitted[1]] += 1
    p1 = process_logits(root_logits, sampling)
    joint = p1[:, None] * np.stack([process_logits(cond[y], sampling) for y in range(V)])  # [V, V]
    expected = DRAWS * joint
    live = expected > 0
    assert counts[~live].sum() == 0, "a token outside the processed support was emitted"
    stat = float(((counts[live] - expected[live]) ** 2 / expected[live]).sum())
    return stat, chi2_critical(int(live.sum()) - 1)


SAMPLINGS = [SamplingConfig(1.0), SamplingConfig(0.6), SamplingConfig(1.3, top_p=0.7)]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=lambda s: f"T{s.temperature}-p{s.top_p}")
def test_sampling_preserves_target_distribution(sampling: SamplingConfig) -> None:
    stat, critical = _chi2(sampling, seed=1)
    assert stat < critical, f"chi2 {stat:.1f} >= critical {critical:.1f}"


def test_chi2_catches_an_off_by_one_residual(monkeypatch: pytest.MonkeyPatch) -> None:
    def off_by_one(residual: np.ndarray, token: int) -> None:
        residual[(token + 1) % residual.shape[0]] = 0.0

    monkeypatch.setattr(accept_mod, "_reject", off_by_one)
    stat, critical = _chi2(SAMPLINGS[0], seed=1)
    assert stat > critical, f"the injected bug went unnoticed: chi2 {stat:.1f} < {critical:.1f}"


def test_sampling_requires_rng() -> None:
    tree, logits, _, _ = _setup()
    with pytest.raises(SpecMismatchError, match="random generator"):
        accept_tree(tree, logits, SamplingConfig(1.0), None)


def test_children_covering_the_support_always_accept_one() -> None:
    """When drafted children cover every token, the residual empties exactly as the last one is taken."""
    tokens = np.array([9] + list(range(V)))
    parents = np.array([-1] + [0] * V)
    tree = tree_buffers(tokens, parents, np.zeros(V + 1), np.ones(V + 1, bool), max_depth=1)
    logits = np.random.default_rng(3).normal(size=(V + 1, V))
    rng = np.random.default_rng(0)
    counts = np.zeros(V)
    for _ in range(3000):
        out = accept_tree(tree, logits, SamplingConfig(0.8, top_p=0.9), rng)
        assert out.accepted == 1
        counts[tree.tokens[out.nodes[1]]] += 1
    expected = 3000 * process_logits(logits[0], SamplingConfig(0.8, top_p=0.9))
    assert counts[expected == 0].sum() == 0
    live = expected > 0
    assert ((counts[live] - expected[live]) ** 2 / expected[live]).sum() < chi2_critical(
        max(int(live.sum()) - 1, 10)
    )
