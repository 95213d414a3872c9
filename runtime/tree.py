"""Draft trees as data: the buffers one verify call takes, and the two tree builders (the spec they
follow, `TreeSpec`, lives in `runtime/tree_spec.py` and is re-exported here).

Place in the data flow (see `runtime/runner.py`)::

    root + Proposal (draft's top-k of the root) --static_tree/dynamic_tree--> TreeBuffers --> target.verify

A tree of N = 7 nodes, depth 3. Node 0 is the root (the token the target chose last); node indices
are in breadth-first order, so every parent precedes its children::

    depth 0        1          2          3
              .-- [1] a --+-- [3] c ---- [6] f
    [0] root -+           '-- [4] d
              '-- [2] b ----- [5] e

    parents   = [-1, 0, 0, 1, 1, 2, 3]
    depth     = [ 0, 1, 1, 2, 2, 2, 3]        (position of node j = committed length + depth[j])
    tree_mask = row j True at j's ancestors and j itself, e.g. row 6 -> {0, 1, 3, 6}
    retrieve  = [[0, 1, 4, -1],               (one root-to-leaf path per leaf, leaves in node
                 [0, 2, 5, -1],                order, padded with -1 to depth + 1 columns)
                 [0, 1, 3, 6]]

Shapes never change between rounds: a tree always has exactly `node_budget` nodes. A dynamic tree
whose draft offers too few candidates is padded with *invalid* nodes (`valid[j] = False`): they
hang under the root, so the target still gets N nodes, and acceptance never looks at them.

The builders drive the draft with `tree_step` calls of a fixed width n (pad rows are dummy nodes
whose mask is self-only; their output is ignored), or of the level's real width for a draft that
takes any width (`DraftRunner.padded_steps` False). Drafted nodes get scratch slots sequentially:

* static tree: node j has slot j - 1 (S = N - 1); only nodes with children are fed to the draft,
  a level at a time, so the slots of leaves are free and the dummies write there.
* dynamic tree (EAGLE-2): the frontier of depth d (k nodes) takes slots (d - 1) k .. d k - 1,
  S = (depth - 1) k; only frontier nodes are ever fed to the draft.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from runtime.errors import SpecMismatchError
from runtime.runner import DraftRunner, Proposal
from runtime.tree_spec import TREE_KINDS, TREE_PRESETS, TreeSpec

__all__ = ["TREE_KINDS", "TREE_PRESETS", "TreeBuffers", "TreeSpec", "build_tree", "dynamic_tree", "static_tree",
           "tree_buffers"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TreeBuffers:
    """One drafted tree, ready for `target.verify` and acceptance. Node 0 is the root.

    Attributes:
        tokens: [N] int64 node token ids (target vocabulary); invalid nodes hold 0.
        parents: [N] int64 parent node index, -1 for the root; parents precede children.
        depth: [N] int64 depth below the root; position of node j = committed length + depth[j].
        tree_mask: [N, N] bool, row j True at j's ancestors and j itself.
        retrieve: [num_leaves, D + 1] int64 root-to-leaf node paths over valid nodes, padded with -1
            (D = the spec's depth).
        scores: [N] float32 cumulative draft log-probability (root 0, invalid nodes -inf).
        valid: [N] bool, False at padding nodes that acceptance must ignore.
    """

    tokens: np.ndarray
    parents: np.ndarray
    depth: np.ndarray
    tree_mask: np.ndarray
    retrieve: np.ndarray
    scores: np.ndarray
    valid: np.ndarray

    @property
    def size(self) -> int:
        """N, the node count."""
        return int(self.tokens.shape[0])

    def positions(self, start: int) -> np.ndarray:
        """[N] int64 absolute positions for a root at position `start`."""
        return start + self.depth

    def children(self, node: int) -> np.ndarray:
        """[c] int64 valid children of `node`, in node order."""
        return np.flatnonzero((self.parents == node) & self.valid)


def tree_buffers(
    tokens: np.ndarray, parents: np.ndarray, scores: np.ndarray, valid: np.ndarray, max_depth: int
) -> TreeBuffers:
    """Derives depth, ancestor mask and root-to-leaf paths from a parent array.

    Args:
        tokens: [N] int64 node tokens.
        parents: [N] int64 parent index (-1 at the root, node 0); parents[j] < j.
        scores: [N] float cumulative draft log-probabilities.
        valid: [N] bool; invalid nodes must be leaves.
        max_depth: D, the width of `retrieve` is D + 1.

    Returns:
        The TreeBuffers.
    """
    n = tokens.shape[0]
    assert parents[0] == -1 and np.all(parents[1:] < np.arange(1, n)), "parents must precede children"
    depth = np.zeros(n, dtype=np.int64)
    mask = np.eye(n, dtype=bool)  # [N, N]
    for j in range(1, n):
        depth[j] = depth[parents[j]] + 1
        mask[j] |= mask[parents[j]]
    assert depth.max() <= max_depth, "tree deeper than its spec"
    has_child = np.zeros(n, dtype=bool)
    has_child[parents[1:][valid[1:]]] = True
    leaves = np.flatnonzero(valid & ~has_child)
    retrieve = np.full((leaves.shape[0], max_depth + 1), -1, dtype=np.int64)
    for row, leaf in enumerate(leaves):
        path = np.flatnonzero(mask[leaf])  # ancestors-or-self; ascending index = ascending depth
        retrieve[row, : path.shape[0]] = path
    return TreeBuffers(
        tokens=tokens.astype(np.int64),
        parents=parents.astype(np.int64),
        depth=depth,
        tree_mask=mask,
        retrieve=retrieve,
        scores=scores.astype(np.float32),
        valid=valid.astype(bool),
    )


def _check_proposal(proposal: Proposal, rows: int, top_k: int) -> None:
    if proposal.token_ids.shape != (rows, top_k) or proposal.logprobs.shape != (rows, top_k):
        raise SpecMismatchError(
            "The draft returned a proposal of the wrong shape.",
            note=f"got ids {proposal.token_ids.shape}, logprobs {proposal.logprobs.shape}; "
            f"expected ({rows}, {top_k})",
            hint="The draft must return exactly top_k continuations per node.",
        )


def _step_mask(ancestor_slots: list[list[int]], slots: np.ndarray, scratch: int) -> np.ndarray:
    """[n, S] bool: row r True at its ancestors' slots (below the root) and its own slot."""
    mask = np.zeros((slots.shape[0], scratch), dtype=bool)
    for r, anc in enumerate(ancestor_slots):
        mask[r, anc] = True
        mask[r, slots[r]] = True
    return mask


def _run_step(
    draft: DraftRunner,
    spec: TreeSpec,
    tokens: np.ndarray,
    slots: np.ndarray,
    ancestor_slots: list[list[int]],
    position: int,
    pad_slots: np.ndarray,
) -> Proposal:
    """Feeds real nodes (all at one depth) plus dummies up to the step width (only for a draft with
    `padded_steps`); returns the real rows."""
    real = tokens.shape[0]
    n = spec.step_width if getattr(draft, "padded_steps", True) else real
    pad = n - real
    step_tokens = np.concatenate([tokens, np.zeros(pad, dtype=np.int64)])  # [n]
    step_slots = np.concatenate([slots, pad_slots[:pad]]).astype(np.int64)  # [n]
    mask = _step_mask(ancestor_slots + [[]] * pad, step_slots, spec.scratch_slots)  # [n, S]
    positions = np.full(n, position, dtype=np.int64)
    proposal = draft.tree_step(step_tokens, positions, step_slots, mask, spec.top_k)
    _check_proposal(proposal, n, spec.top_k)
    return Proposal(proposal.token_ids[:real], proposal.logprobs[:real])


def static_tree(
    spec: TreeSpec, draft: DraftRunner, root: int, proposal: Proposal, root_position: int
) -> TreeBuffers:
    """Fills a static tree from the draft, one depth level per `tree_step` call.

    Args:
        spec: a static TreeSpec.
        draft: the draft runner; its committed cache ends with the root.
        root: the root token.
        proposal: the draft's top-k continuations of the root, [1, K].
        root_position: absolute position of the root.

    Returns:
        TreeBuffers with N = spec.node_budget nodes, all valid.
    """
    _check_proposal(proposal, 1, spec.top_k)
    parents = spec.parents  # [N]
    n = spec.node_budget
    ranks = np.array([0] + [c[-1] for c in spec.choices], dtype=np.int64)
    depth = np.array([0] + [len(c) for c in spec.choices], dtype=np.int64)
    tokens = np.zeros(n, dtype=np.int64)
    scores = np.zeros(n, dtype=np.float64)
    tokens[0] = root
    has_child = np.zeros(n, dtype=bool)
    has_child[parents[1:]] = True
    leaf_slots = np.flatnonzero(~has_child) - 1  # free slots for dummy rows
    by_node = {0: (proposal, 0)}
    for d in range(1, spec.depth + 1):
        level = np.flatnonzero(depth == d)
        for j in level:  # children of level d - 1 read the proposal of their parent
            prop, row = by_node[int(parents[j])]
            tokens[j] = prop.token_ids[row, ranks[j]]
            scores[j] = scores[parents[j]] + min(float(prop.logprobs[row, ranks[j]]), 0.0)
        internal = level[has_child[level]]
        if d == spec.depth or internal.size == 0:
            continue
        anc = [[int(a) - 1 for a in _ancestors(parents, j)] for j in internal]
        step = _run_step(draft, spec, tokens[internal], internal - 1, anc, root_position + d, leaf_slots)
        by_node.update({int(j): (step, r) for r, j in enumerate(internal)})
    return tree_buffers(tokens, parents, scores, np.ones(n, dtype=bool), spec.depth)


def _ancestors(parents: np.ndarray, j: int) -> list[int]:
    """Ancestors of node j below the root (excluding j and the root)."""
    out = []
    j = int(parents[j])
    while j > 0:
        out.append(j)
        j = int(parents[j])
    return out


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first; ties go to the lower index."""
    return np.argsort(-scores, kind="stable")[:k]


def _select(parents: np.ndarray, scores: np.ndarray, depth: np.ndarray, budget: int) -> np.ndarray:
    """Best `budget` candidates by cumulative score, closed under parents, in ascending index.

    A child's score never exceeds its parent's (log-probs are clamped at 0) and ties go to the
    shallower node, so walking candidates best-first always meets a parent before its children; the
    parent check only guards that invariant.
    """
    order = np.lexsort((np.arange(scores.shape[0]), depth, -scores))
    picked = np.zeros(scores.shape[0], dtype=bool)
    count = 0
    for c in order:
        if count == budget:
            break
        if parents[c] < 0 or picked[parents[c]]:
            picked[c] = True
            count += 1
    return np.flatnonzero(picked)


def dynamic_tree(
    spec: TreeSpec, draft: DraftRunner, root: int, proposal: Proposal, root_position: int,
    stop_ids: frozenset[int] = frozenset(), max_depth: int | None = None,
) -> TreeBuffers:
    """Grows an EAGLE-2 dynamic tree from the draft's scores under a fixed node budget.

    Candidates at depth 1 are the root's top-k. At each depth d < D the k best candidates of depth d
    (the frontier, by cumulative log-prob) go through one `tree_step`, giving k x k candidates at
    depth d + 1. Finally the best N - 1 candidates of all depths, plus the root, form the tree;
    too few candidates leave invalid padding nodes. With `spec.min_prob`, frontier and tree keep only
    candidates of cumulative probability >= min_prob (a child never scores above its parent, so the
    tree stays closed under parents), growth stops early when no frontier candidate is left, and the
    tree is not padded: it has between 1 and N nodes. A frontier candidate is not expanded when N - 1
    candidates already score above it (none of its children could be chosen), so growth may stop
    before depth D without changing the tree.

    Candidates whose token is in `stop_ids` (EOS) stay leaves: generation ends at them, so nothing
    below one could ever be emitted, and the frontier's k places go to the others.

    A draft with a `calibration` (`runtime.tree_calibration.TreeCalibration`, from its manifest)
    has its log-probabilities mapped to the target's measured acceptance before they are summed,
    so scores, frontier, selection and `min_prob` all rank candidates by their estimated chance of
    being accepted rather than by the draft's own confidence.

    Args:
        spec: a dynamic TreeSpec.
        draft: the draft runner; its committed cache ends with the root.
        root: the root token.
        proposal: the draft's top-k continuations of the root, [1, K].
        root_position: absolute position of the root.
        stop_ids: tokens that end generation (never expanded).
        max_depth: grow no deeper than this (tokens the call may still emit, minus the bonus);
            None: spec.depth. At least 1.

    Returns:
        TreeBuffers closed under parents: N = spec.node_budget nodes, or 1..N with spec.min_prob.
    """
    _check_proposal(proposal, 1, spec.top_k)
    k = spec.top_k
    calibration = getattr(draft, "calibration", None)
    tokens = proposal.token_ids[0].astype(np.int64)  # [C] every candidate so far
    scores = _scores(proposal.logprobs, calibration)[0]  # [C] cumulative log-probs
    parents = np.full(k, -1, dtype=np.int64)  # [C] parent candidate, -1 = the root
    depth = np.ones(k, dtype=np.int64)  # [C]
    slot_of: dict[int, int] = {}
    floor = np.log(spec.min_prob) if spec.min_prob > 0 else -np.inf
    stops = np.fromiter(stop_ids, dtype=np.int64, count=len(stop_ids))
    block = np.arange(k)  # candidates of the deepest level so far
    deepest = spec.depth if max_depth is None else max(1, min(spec.depth, max_depth))
    for d in range(1, deepest):
        open_ = block[~_is_stop(tokens[block], stops)]  # EOS candidates stay leaves
        frontier = open_[_top(scores[open_], k)]  # [f <= k]
        frontier = frontier[scores[frontier] >= floor]
        frontier = frontier[_can_place_child(scores, frontier, spec.node_budget - 1)]
        if frontier.size == 0:
            break
        f = frontier.size
        slots = (d - 1) * k + np.arange(f)
        slot_of.update(zip(frontier.tolist(), slots.tolist(), strict=True))
        anc = [[slot_of[a] for a in _candidate_ancestors(parents, int(c))] for c in frontier]
        unused = (d - 1) * k + np.arange(f, k)  # this depth's slots no candidate holds: step padding
        step = _run_step(draft, spec, tokens[frontier], slots, anc, root_position + d, unused)
        block = tokens.shape[0] + np.arange(f * k)
        tokens = np.concatenate([tokens, step.token_ids.reshape(-1).astype(np.int64)])
        scores = np.concatenate([scores, (scores[frontier, None] + _scores(step.logprobs, calibration)).reshape(-1)])
        parents = np.concatenate([parents, np.repeat(frontier, k)])
        depth = np.concatenate([depth, np.full(f * k, d + 1, dtype=np.int64)])
    keep = _select(parents, scores, depth, spec.node_budget - 1)  # [m] ascending
    keep = keep[scores[keep] >= floor]
    return _pack(spec, root, keep, tokens, parents, scores)


def _can_place_child(scores: np.ndarray, frontier: np.ndarray, budget: int) -> np.ndarray:
    """[f] bool: whether a child of each frontier candidate could still enter the final tree.

    A child scores at most its parent, so when `budget` candidates already score strictly above the
    parent, `_select` fills the tree before it reaches the child: expanding that parent cannot change
    the tree and only costs draft work.
    """
    above = (scores[None, :] > scores[frontier, None]).sum(axis=1)  # [f]
    return above < budget


def _clamp(logprobs: np.ndarray) -> np.ndarray:
    """float64 log-probs clamped to (-inf, 0]; NaN becomes -inf (never preferred)."""
    lp = np.array(logprobs, dtype=np.float64)
    lp[np.isnan(lp)] = -np.inf
    return np.minimum(lp, 0.0, out=lp)


def _scores(logprobs: np.ndarray, calibration) -> np.ndarray:
    """[n, K] per-candidate scores: clamped draft log-probs, mapped by the draft's calibration if any."""
    lp = _clamp(logprobs)
    return lp if calibration is None else calibration.apply(lp)


def _is_stop(tokens: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """[c] bool, tokens found in `stops` (a handful of EOS ids: a broadcast compare beats np.isin)."""
    return (tokens[:, None] == stops[None, :]).any(axis=1)


def _candidate_ancestors(parents: np.ndarray, c: int) -> list[int]:
    """Candidate ancestors of candidate c (excluding c and the root)."""
    out = []
    c = int(parents[c])
    while c >= 0:
        out.append(c)
        c = int(parents[c])
    return out


def _pack(
    spec: TreeSpec, root: int, keep: np.ndarray, tokens: np.ndarray, parents: np.ndarray, scores: np.ndarray
) -> TreeBuffers:
    """Lays the kept candidates out as nodes 1..m (padding m+1..N-1 with invalid nodes; a pruned
    spec, min_prob > 0, is not padded: N = m + 1)."""
    m = keep.shape[0]
    n = m + 1 if spec.min_prob > 0 else spec.node_budget
    if m < n - 1:
        logger.debug("dynamic tree: %d candidates for %d nodes; padding with invalid nodes", m, n - 1)
    node_of = {int(c): j + 1 for j, c in enumerate(keep)}
    node_tokens = np.zeros(n, dtype=np.int64)
    node_parents = np.zeros(n, dtype=np.int64)  # invalid padding hangs under the root
    node_scores = np.full(n, -np.inf)
    node_tokens[0], node_parents[0], node_scores[0] = root, -1, 0.0
    node_tokens[1 : m + 1] = tokens[keep]
    node_parents[1 : m + 1] = [node_of.get(int(p), 0) for p in parents[keep]]
    node_scores[1 : m + 1] = scores[keep]
    valid = np.arange(n) <= m
    return tree_buffers(node_tokens, node_parents, node_scores, valid, spec.depth)


def build_tree(
    spec: TreeSpec, draft: DraftRunner, root: int, proposal: Proposal, root_position: int,
    stop_ids: frozenset[int] = frozenset(), max_depth: int | None = None,
) -> TreeBuffers:
    """Builds the tree the spec asks for; see `static_tree` and `dynamic_tree` (a static tree keeps
    its fixed shape, so `stop_ids` and `max_depth` only shape dynamic trees)."""
    if spec.kind == "static":
        return static_tree(spec, draft, root, proposal, root_position)
    return dynamic_tree(spec, draft, root, proposal, root_position, stop_ids, max_depth)
