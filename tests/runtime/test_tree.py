"""Tree specs and builders vs slow oracles: masks, depths, paths, scratch slots, EAGLE-2 selection."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import SpecMismatchError
from runtime.runner import Proposal
from runtime.tree import TreeSpec, build_tree, tree_buffers

VOCAB = 30
ROOT = 7
ROOT_POS = 11


def _hash_proposal(seq: tuple[int, ...], k: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic 'LM': top-k ids and best-first log-probs as a function of the token path."""
    rng = np.random.default_rng(abs(hash(seq)) % (2**32))
    ids = rng.choice(VOCAB, k, replace=False)
    return ids.astype(np.int64), -np.sort(rng.exponential(size=k)).astype(np.float32)


class HashDraft:
    """A draft whose proposal for a node depends on exactly what its tree mask lets it see.

    It keeps (position, token) per scratch slot as a real draft keeps K/V, so a wrong slot, mask,
    position or a dummy overwriting a live slot changes the proposals and the oracle comparison fails.
    """

    def __init__(self, spec: TreeSpec):
        self.spec = spec
        self.content: dict[int, tuple[int, int]] = {}
        self.calls: list[tuple[int, np.ndarray]] = []

    def tree_step(self, tokens, positions, slots, tree_mask, top_k):
        n = tokens.shape[0]
        assert tree_mask.shape == (n, self.spec.scratch_slots) and tree_mask.dtype == bool
        assert len(set(slots.tolist())) == n and slots.min() >= 0 and slots.max() < self.spec.scratch_slots
        assert np.all(tree_mask[np.arange(n), slots]), "each node sees itself"
        self.calls.append((n, slots.copy()))
        for s, p, t in zip(slots.tolist(), positions.tolist(), tokens.tolist(), strict=True):
            self.content[s] = (p, t)
        ids, lps = [], []
        for r in range(n):
            seen = sorted(self.content[s] for s in np.flatnonzero(tree_mask[r]))
            i, lp = _hash_proposal((ROOT,) + tuple(t for _, t in seen), top_k)
            ids.append(i)
            lps.append(lp)
        return Proposal(np.stack(ids), np.stack(lps))


def _root_proposal(k: int) -> Proposal:
    ids, lps = _hash_proposal((ROOT,), k)
    return Proposal(ids[None], lps[None])


def _oracle_structure(parents: np.ndarray, valid: np.ndarray, max_depth: int):
    """Depth, ancestor-or-self mask and root-to-leaf paths, the slow obvious way."""
    n = parents.shape[0]

    def chain(j):
        out = [j]
        while parents[out[-1]] >= 0:
            out.append(int(parents[out[-1]]))
        return out[::-1]

    depth = np.array([len(chain(j)) - 1 for j in range(n)])
    mask = np.array([[j in chain(i) for j in range(n)] for i in range(n)])
    leaves = [j for j in range(n) if valid[j] and not any(valid[c] and parents[c] == j for c in range(n))]
    paths = np.full((len(leaves), max_depth + 1), -1)
    for r, leaf in enumerate(leaves):
        paths[r, : len(chain(leaf))] = chain(leaf)
    return depth, mask, paths


def _token_path(tree, j: int) -> tuple[int, ...]:
    out = []
    while j > 0:
        out.append(int(tree.tokens[j]))
        j = int(tree.parents[j])
    return tuple(out[::-1])


def _check_structure(tree, spec: TreeSpec) -> None:
    n = spec.node_budget
    assert tree.tokens.shape == (n,) and tree.tree_mask.shape == (n, n)
    assert tree.parents[0] == -1 and tree.tokens[0] == ROOT
    depth, mask, paths = _oracle_structure(tree.parents, tree.valid, spec.depth)
    np.testing.assert_array_equal(tree.depth, depth)
    np.testing.assert_array_equal(tree.tree_mask, mask)
    np.testing.assert_array_equal(tree.retrieve, paths)
    np.testing.assert_array_equal(tree.positions(ROOT_POS), ROOT_POS + depth)
    assert np.all(tree.valid[tree.parents[1:][tree.valid[1:]]]), "closed under parents"


def _static_oracle(spec: TreeSpec) -> dict[tuple[int, ...], tuple[int, ...]]:
    """choice path -> token path, walking the hash LM directly."""
    out = {}
    for c in spec.choices:
        seq: tuple[int, ...] = ()
        for r in c:
            ids, _ = _hash_proposal((ROOT,) + seq, spec.top_k)
            seq += (int(ids[r]),)
        out[c] = seq
    return out


def _dynamic_oracle(spec: TreeSpec, stops: frozenset[int] = frozenset(),
                    max_depth: int | None = None) -> dict[tuple[int, ...], float]:
    """token path -> cumulative score of the kept nodes, EAGLE-2 written with lists (paths ending in
    a stop token are never expanded; no path is longer than max_depth)."""
    ids, lps = _hash_proposal((ROOT,), spec.top_k)
    level = [((int(t),), float(lp)) for t, lp in zip(ids, lps, strict=True)]
    every = list(level)
    for _ in range(1, min(spec.depth, max_depth or spec.depth)):
        frontier = sorted((c for c in level if c[0][-1] not in stops), key=lambda c: -c[1])[: spec.top_k]
        level = []
        for path, score in frontier:
            ids, lps = _hash_proposal((ROOT,) + path, spec.top_k)
            level += [(path + (int(t),), score + float(lp)) for t, lp in zip(ids, lps, strict=True)]
        every += level
    return dict(sorted(every, key=lambda c: -c[1])[: spec.node_budget - 1])


STATIC_SPECS = [
    TreeSpec.chain(1),
    TreeSpec.chain(5),
    TreeSpec.from_name("static-16"),
    TreeSpec.static([(0,), (1,), (2,), (3,), (0, 0), (1, 0), (2, 0), (2, 1), (0, 0, 0), (2, 1, 0)]),
    TreeSpec.static([(0,), (0, 0), (0, 1), (0, 2), (0, 0, 0), (0, 1, 0), (0, 1, 1), (0, 1, 1, 0)]),
]


@pytest.mark.parametrize("spec", STATIC_SPECS, ids=lambda s: f"N{s.node_budget}-D{s.depth}")
def test_static_tree_matches_oracle(spec: TreeSpec) -> None:
    draft = HashDraft(spec)
    tree = build_tree(spec, draft, ROOT, _root_proposal(spec.top_k), ROOT_POS)
    _check_structure(tree, spec)
    assert tree.valid.all()
    oracle = _static_oracle(spec)
    for j, c in enumerate(spec.choices, start=1):
        assert _token_path(tree, j) == oracle[c]
    assert {n for n, _ in draft.calls} <= {spec.step_width}, "fixed tree_step width"
    assert len(draft.calls) == (spec.depth - 1 if spec.depth > 1 else 0)


DYNAMIC_SPECS = [
    TreeSpec.dynamic(top_k=4, depth=6, node_budget=32),
    TreeSpec.dynamic(top_k=3, depth=4, node_budget=12),
    TreeSpec.dynamic(top_k=1, depth=4, node_budget=5),
    TreeSpec.dynamic(top_k=5, depth=1, node_budget=4),
    TreeSpec.dynamic(top_k=2, depth=3, node_budget=30),  # 2 + 4 + 4 = 10 candidates: padded
]


@pytest.mark.parametrize("spec", DYNAMIC_SPECS, ids=lambda s: f"K{s.top_k}-D{s.depth}-N{s.node_budget}")
def test_dynamic_tree_matches_oracle(spec: TreeSpec) -> None:
    draft = HashDraft(spec)
    tree = build_tree(spec, draft, ROOT, _root_proposal(spec.top_k), ROOT_POS)
    _check_structure(tree, spec)
    oracle = _dynamic_oracle(spec)
    got = {_token_path(tree, j): float(tree.scores[j]) for j in np.flatnonzero(tree.valid)[1:]}
    assert got.keys() == oracle.keys()
    for path, score in oracle.items():
        assert got[path] == pytest.approx(score, rel=1e-5)
    assert int(tree.valid.sum()) == min(spec.node_budget, 1 + len(oracle))
    assert all(n == spec.top_k for n, _ in draft.calls) and len(draft.calls) <= spec.depth - 1


def test_dynamic_padding_is_inert() -> None:
    spec = DYNAMIC_SPECS[-1]
    tree = build_tree(spec, HashDraft(spec), ROOT, _root_proposal(spec.top_k), ROOT_POS)
    pad = np.flatnonzero(~tree.valid)
    assert pad.size == spec.node_budget - 11
    assert np.all(tree.parents[pad] == 0) and np.all(tree.depth[pad] == 1)
    assert not np.isin(pad, tree.retrieve).any()
    assert np.all(tree.scores[pad] == -np.inf)


def test_dynamic_closed_under_parents_with_ties() -> None:
    """Equal (zero) log-probs everywhere: the shallower node must still win the tie."""
    spec = TreeSpec.dynamic(top_k=3, depth=4, node_budget=9)

    class FlatDraft:
        def tree_step(self, tokens, positions, slots, tree_mask, top_k):
            n = tokens.shape[0]
            return Proposal(np.tile(np.arange(top_k), (n, 1)), np.zeros((n, top_k), np.float32))

    root = Proposal(np.arange(3)[None], np.zeros((1, 3), np.float32))
    tree = build_tree(spec, FlatDraft(), ROOT, root, ROOT_POS)
    _check_structure(tree, spec)
    assert tree.valid.all()


def test_tree_buffers_example_from_docstring() -> None:
    parents = np.array([-1, 0, 0, 1, 1, 2, 3])
    tree = tree_buffers(np.arange(7), parents, np.zeros(7), np.ones(7, bool), max_depth=3)
    np.testing.assert_array_equal(tree.depth, [0, 1, 1, 2, 2, 2, 3])
    np.testing.assert_array_equal(np.flatnonzero(tree.tree_mask[6]), [0, 1, 3, 6])
    np.testing.assert_array_equal(tree.retrieve, [[0, 1, 4, -1], [0, 2, 5, -1], [0, 1, 3, 6]])


def test_wrong_proposal_shape_is_refused() -> None:
    spec = TreeSpec.dynamic(top_k=3, depth=2, node_budget=6)
    bad = Proposal(np.zeros((1, 2), np.int64), np.zeros((1, 2), np.float32))
    with pytest.raises(SpecMismatchError, match="wrong shape"):
        build_tree(spec, HashDraft(spec), ROOT, bad, ROOT_POS)


@pytest.mark.parametrize("min_prob", [0.5, 0.1, 0.02, 1e-4])
@pytest.mark.parametrize("spec", DYNAMIC_SPECS[:3], ids=lambda s: f"K{s.top_k}-D{s.depth}-N{s.node_budget}")
def test_pruned_dynamic_tree_is_the_full_tree_above_the_floor(spec: TreeSpec, min_prob: float) -> None:
    """min_prob keeps exactly the EAGLE-2 tree's nodes of cumulative probability >= min_prob, unpadded,
    and stops drafting at the first depth with no such frontier node."""
    pruned = TreeSpec.dynamic(spec.top_k, spec.depth, spec.node_budget, min_prob=min_prob)
    draft = HashDraft(pruned)
    tree = build_tree(pruned, draft, ROOT, _root_proposal(spec.top_k), ROOT_POS)
    want = {p: s for p, s in _dynamic_oracle(spec).items() if s >= np.log(min_prob)}
    assert tree.valid.all() and tree.size == 1 + len(want)
    depth, mask, paths = _oracle_structure(tree.parents, tree.valid, spec.depth)
    np.testing.assert_array_equal(tree.depth, depth)
    np.testing.assert_array_equal(tree.tree_mask, mask)
    np.testing.assert_array_equal(tree.retrieve, paths)
    got = {_token_path(tree, j): float(tree.scores[j]) for j in range(1, tree.size)}
    assert got.keys() == want.keys()
    deepest_kept_frontier = max((len(p) for p, s in want.items()), default=0)
    assert len(draft.calls) <= max(deepest_kept_frontier, 1) and all(n == spec.top_k for n, _ in draft.calls)


@pytest.mark.parametrize("spec", DYNAMIC_SPECS[:3], ids=lambda s: f"K{s.top_k}-D{s.depth}-N{s.node_budget}")
def test_dynamic_tree_never_grows_below_a_stop_token(spec: TreeSpec) -> None:
    """EOS candidates stay leaves (nothing after them can be emitted) and the frontier goes to the
    others: the tree is the oracle's with those paths cut, and no node hangs under a stop token."""
    root_ids, _ = _hash_proposal((ROOT,), spec.top_k)
    stops = frozenset({int(root_ids[0]), int(root_ids[2 % spec.top_k])})  # the root's best candidate among them
    tree = build_tree(spec, HashDraft(spec), ROOT, _root_proposal(spec.top_k), ROOT_POS, stop_ids=stops)
    _check_structure(tree, spec)
    got = {_token_path(tree, j) for j in range(1, tree.size) if tree.valid[j]}
    assert got == set(_dynamic_oracle(spec, stops))
    assert any(path[-1] in stops for path in got), "the stop candidates themselves are kept"
    parents = tree.parents[1:][tree.valid[1:]]
    assert not np.isin(tree.tokens[parents[parents > 0]], list(stops)).any()


@pytest.mark.parametrize("max_depth", [1, 2, 3])
def test_dynamic_tree_grows_no_deeper_than_asked(max_depth: int) -> None:
    spec = DYNAMIC_SPECS[1]
    draft = HashDraft(spec)
    tree = build_tree(spec, draft, ROOT, _root_proposal(spec.top_k), ROOT_POS, max_depth=max_depth)
    assert tree.depth.max() <= max_depth and len(draft.calls) <= max_depth - 1
    got = {_token_path(tree, j) for j in range(1, tree.size) if tree.valid[j]}
    assert got == set(_dynamic_oracle(spec, max_depth=max_depth))


@pytest.mark.parametrize("spec", [DYNAMIC_SPECS[0], STATIC_SPECS[3]], ids=["dynamic", "static"])
def test_unpadded_draft_gets_only_real_nodes_and_the_same_tree(spec: TreeSpec) -> None:
    """A draft that takes any width (`padded_steps` False) sees no dummy rows; the tree is unchanged."""
    if spec.kind == "dynamic":
        spec = TreeSpec.dynamic(spec.top_k, spec.depth, spec.node_budget, min_prob=0.3)  # levels narrower than k
    padded = HashDraft(spec)
    unpadded = HashDraft(spec)
    unpadded.padded_steps = False
    want = build_tree(spec, padded, ROOT, _root_proposal(spec.top_k), ROOT_POS)
    got = build_tree(spec, unpadded, ROOT, _root_proposal(spec.top_k), ROOT_POS)
    for field in ("tokens", "parents", "tree_mask", "valid"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    assert all(n == spec.step_width for n, _ in padded.calls)
    widths = [n for n, _ in unpadded.calls]
    assert len(widths) == len(padded.calls) and min(widths) < spec.step_width


def test_dynamic_tree_skips_parents_whose_children_cannot_be_chosen() -> None:
    """N - 1 = 2 nodes: once two candidates score above a frontier node, its children could never
    enter the tree, so it is not expanded; growth stops at depth 3 of 5 with the tree unchanged."""
    spec = TreeSpec.dynamic(top_k=2, depth=5, node_budget=3)

    class FixedDraft:
        def __init__(self):
            self.widths: list[int] = []

        def tree_step(self, tokens, positions, slots, tree_mask, top_k):
            n = tokens.shape[0]
            self.widths.append(n)
            return Proposal(np.tile([5, 6], (n, 1)), np.tile(np.float32([-1.0, -2.0]), (n, 1)))

    draft = FixedDraft()
    draft.padded_steps = False
    root = Proposal(np.array([[3, 4]]), np.float32([[0.0, -5.0]]))
    tree = build_tree(spec, draft, ROOT, root, ROOT_POS)
    # depth 1 expands both candidates (scores 0, -5); depth 2 only the best child (-1): the other
    # (-2) already has two candidates above it; at depth 3 none is left to expand.
    assert draft.widths == [2, 1]
    assert [_token_path(tree, j) for j in range(1, tree.size)] == [(3,), (3, 5)]
    np.testing.assert_allclose(tree.scores[1:], [0.0, -1.0])
