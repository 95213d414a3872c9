"""Attention masks over a preallocated KV cache, for prefill, chains and trees.

A decoder step writes T new tokens at slots [start, start + T) of a cache with S_max slots. Query j
sees the committed slots [0, start), the new slots its tree row allows (ancestors and itself; causal
when there is no tree) and nothing beyond. Visibility is built as a bool [T, S_max] table, then
family rules are laid over it (sliding windows, Gemma3's bidirectional image blocks) and it becomes
the 4D additive float mask HF attention takes as-is: [B, 1, T, S_max], 0 visible, dtype-min hidden.
dtype-min (not -inf) keeps a fully hidden row finite instead of NaN.

Sliding windows are measured in *chain-equivalent* positions: a tree node at depth d sits where it
would sit had its branch been run alone as a chain (start + d), so a branch in a tree sees exactly
the keys it would see as a chain.
"""

from __future__ import annotations

import torch


def step_depths(num_tokens: int, tree_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Depth of each new token below the first: [T] (j for a chain, ancestor count for a tree)."""
    if tree_mask is None:
        return torch.arange(num_tokens, device=device)
    return tree_mask.to(device=device, dtype=torch.long).sum(-1) - 1


def visibility(
    start: int, num_tokens: int, max_len: int, tree_mask: torch.Tensor | None, device
) -> torch.Tensor:
    """Which slots each new token sees: bool [T, S_max].

    Args:
        start: committed slots, all visible.
        num_tokens: T, the new tokens written at [start, start + T).
        max_len: S_max, the cache size.
        tree_mask: [T, T] bool, row j True at j's ancestors and itself; None means causal.
    """
    visible = torch.zeros(num_tokens, max_len, dtype=torch.bool, device=device)  # [T, S_max]
    visible[:, :start] = True
    if tree_mask is None:
        block = torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=device).tril()
    else:
        block = tree_mask.to(device=device, dtype=torch.bool)
    visible[:, start : start + num_tokens] = block
    return visible


def with_blocks(visible: torch.Tensor, start: int, block_ids: torch.Tensor) -> torch.Tensor:
    """Lets new tokens of one block see each other both ways (Gemma3 image tokens at prefill).

    Args:
        visible: [T, S_max] bool.
        block_ids: [T] int, the block of each new token, -1 for tokens in no block.
    """
    same = (block_ids[:, None] == block_ids[None, :]) & (block_ids[:, None] >= 0)  # [T, T]
    out = visible.clone()
    out[:, start : start + block_ids.shape[0]] |= same
    return out


def within_window(visible: torch.Tensor, start: int, depths: torch.Tensor, window: int) -> torch.Tensor:
    """Hides keys `window` or more chain-equivalent positions behind the query: [T, S_max] bool."""
    num_tokens, max_len = visible.shape
    key_pos = torch.arange(max_len, device=visible.device)  # [S_max]
    key_pos[start : start + num_tokens] = start + depths
    query_pos = start + depths  # [T]
    return visible & (key_pos[None, :] > query_pos[:, None] - window)


def additive(visible: torch.Tensor, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
    """Turns a bool [T, S_max] table into the float mask [B, 1, T, S_max] (0 / dtype-min)."""
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[None, None].expand(batch_size, 1, *visible.shape)
