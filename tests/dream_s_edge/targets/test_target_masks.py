"""Visibility tables and the additive mask: tree rows, windows in chain positions, image blocks."""

from __future__ import annotations

import torch

from dream_s_edge.targets import masks


def test_tree_visibility_hides_siblings_and_future():
    tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)  # root with two children
    visible = masks.visibility(2, 3, 8, tree, "cpu")
    assert visible.tolist() == [
        [True, True, True, False, False, False, False, False],
        [True, True, True, True, False, False, False, False],
        [True, True, True, False, True, False, False, False],
    ]


def test_window_uses_chain_positions():
    tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    visible = masks.visibility(4, 3, 8, tree, "cpu")
    depths = masks.step_depths(3, tree, "cpu")
    windowed = masks.within_window(visible, 4, depths, window=3)
    # Node 2 is at depth 1 (position 5) although it sits in slot 6: it sees positions 3..5.
    assert windowed[2].nonzero().flatten().tolist() == [3, 4, 6]


def test_blocks_are_bidirectional_and_additive_is_finite():
    visible = masks.visibility(0, 4, 6, None, "cpu")
    blocked = masks.with_blocks(visible, 0, torch.tensor([-1, 0, 0, -1]))
    assert blocked[1, 2] and not blocked[0, 1] and not blocked[3, 4]
    mask = masks.additive(blocked, 2, torch.float32)
    assert mask.shape == (2, 1, 4, 6) and torch.isfinite(mask).all()
    assert mask[0, 0, 1, 2] == 0 and mask[0, 0, 0, 1] == torch.finfo(torch.float32).min
