"""Boolean attention masks of the draft (True = may read), one function per situation.

Two key spaces exist. Both put the tree's scratch area *before* the committed region, so the keys in
use always form a prefix of a preallocated buffer and a step attends over a view, never a copy:

  * self-attention slots: `offset` scratch slots for tree nodes, then the committed stream (slots
    may be fewer than positions under VTC);
  * feature-memory entries: entry 0 the learned null key; then the tree nodes' output features
    (feature autoregression) and the root's own output feature, if any; then from `offset` on the
    feature of absolute position j at entry offset + j. One-step shift: position p reads the
    features of positions < p.

Teacher-forced training has no scratch: `causal_mask` with offset 0 and `shifted_memory_mask` with
offset 1. The runner uses the same two for chains (prefill, advance) and the `tree_*` pair for
tree steps.
"""

from __future__ import annotations

import torch


def causal_mask(n: int, width: int | None = None, start: int = 0, offset: int = 0, device=None) -> torch.Tensor:
    """Chain self-attention mask: query i reads committed slots 0 .. start + i.

    Args:
        n: queries (new tokens), written at committed slots start .. start + n - 1.
        width: key slots; defaults to offset + start + n.
        start: committed slots before the first query.
        offset: buffer slot of committed slot 0 (the scratch area before it is not read).
        device: torch device.

    Returns:
        [n, width] bool.
    """
    width = offset + start + n if width is None else width
    cols = torch.arange(width, device=device)
    limit = torch.arange(n, device=device) + offset + start + 1
    return (cols[None, :] >= offset) & (cols[None, :] < limit[:, None])


def shifted_memory_mask(positions: torch.Tensor, width: int, offset: int = 1) -> torch.Tensor:
    """Feature-memory mask of the one-step shift: position p reads the null entry and the features
    of positions 0 .. p - 1 (entries offset .. offset + p - 1).

    Args:
        positions: [n] int64 absolute positions of the queries.
        width: memory entries in the key tensor.
        offset: entry of position 0's feature (1 when only the null entry precedes it).

    Returns:
        [n, width] bool; column 0 is always True.
    """
    cols = torch.arange(width, device=positions.device)
    mask = (cols[None, :] >= offset) & (cols[None, :] < offset + positions[:, None])
    mask[:, 0] = True
    return mask


def tree_self_mask(tree: torch.Tensor, committed: int) -> torch.Tensor:
    """Self-attention mask of tree nodes: the scratch slots of the node's ancestors and of itself,
    then every committed slot (root included).

    Args:
        tree: [n, S] bool over scratch slots 0 .. S - 1, True at ancestors and the node itself.
        committed: committed slots, at buffer slots S .. S + committed - 1.

    Returns:
        [n, S + committed] bool.
    """
    n, S = tree.shape
    mask = torch.ones(n, S + committed, dtype=torch.bool, device=tree.device)
    mask[:, :S] = tree
    return mask


def tree_memory_mask(ancestors: torch.Tensor, committed: int) -> torch.Tensor:
    """Feature-memory mask of tree nodes: null entry, the ancestors' output features (never the
    node's own), the root's output feature, and the committed target features.

    Layout: entry 0 null, 1 .. S scratch slots, S + 1 the root, S + 2 + j the feature of position j.

    Args:
        ancestors: [n, S] bool over scratch slots, True at strict ancestors below the root.
        committed: committed target features (the root's position P: features 0 .. P - 1).

    Returns:
        [n, S + 2 + committed] bool.
    """
    n, S = ancestors.shape
    mask = torch.ones(n, S + 2 + committed, dtype=torch.bool, device=ancestors.device)
    mask[:, 1:S + 1] = ancestors
    return mask
