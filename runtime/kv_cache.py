"""A preallocated key/value cache in numpy, with the verbs the speculative loop needs.

Place in the data flow: a target (or draft) runner writes K/V of the N tree nodes after the committed
`length` during `verify`; `commit(accepted, prev_len)` then moves the accepted slots to contiguous
positions and advances `length`. Nothing is ever concatenated or reallocated: the onnxruntime and
TensorRT runners bind these arrays once and hand them to the engine on every call.

Layout: two arrays, `k` and `v`, each [L, B, Hkv, S, D] (L layers, B batch, Hkv key/value heads,
S = max_context + node_budget slots, D head dim), C-contiguous, so `layer(i)` returns views
[B, Hkv, S, D] that are themselves contiguous, in the [B, H, S, D] order attention kernels use::

    slot  0 ........ length-1 | length ........ length+N-1 | ...... S-1
          committed tokens     | tree nodes of this verify  | free
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import CapacityError, SpecMismatchError


@dataclass(frozen=True)
class KVCacheSpec:
    """Sizes of a KV cache.

    Attributes:
        num_layers: L.
        num_kv_heads: Hkv.
        head_dim: D.
        max_context: committed tokens the cache holds.
        node_budget: tree nodes written after the committed tokens by one verify.
        batch: B (the runtime decodes batch 1).
        dtype: numpy dtype name of K and V.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_context: int
    node_budget: int
    batch: int = 1
    dtype: str = "float32"

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """[L, B, Hkv, S, D] of `k` and of `v`."""
        slots = self.max_context + self.node_budget
        return (self.num_layers, self.batch, self.num_kv_heads, slots, self.head_dim)


class KVCache:
    """K and V buffers allocated once; `length` committed slots, the rest scratch.

    Attributes:
        spec: the sizes.
        k: [L, B, Hkv, S, D] keys (the same array for the cache's whole life).
        v: [L, B, Hkv, S, D] values.
        length: committed slots.
    """

    def __init__(self, spec: KVCacheSpec):
        self.spec = spec
        self.k = np.zeros(spec.shape, dtype=spec.dtype)
        self.v = np.zeros(spec.shape, dtype=spec.dtype)
        self.length = 0

    @property
    def capacity(self) -> int:
        """S, the slots each layer holds (max_context + node_budget)."""
        return self.k.shape[3]

    def reset(self) -> None:
        """Forgets every committed token; keeps the buffers (stale values are never read)."""
        self.length = 0

    def layer(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Views (k, v), each [B, Hkv, S, D], of layer i; writes go into the cache."""
        return self.k[i], self.v[i]

    def write(self, i: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Writes k, v [B, Hkv, n, D] of layer i into slots start .. start + n - 1."""
        n = k.shape[2]
        if start + n > self.capacity:
            raise CapacityError(
                "K/V write past the end of the cache.",
                note=f"slots {start}..{start + n - 1}, capacity {self.capacity}",
                hint="Raise max_context or node_budget when allocating the cache.",
            )
        self.k[i, :, :, start : start + n] = k
        self.v[i, :, :, start : start + n] = v

    def commit(self, accepted_idx: np.ndarray, prev_len: int) -> None:
        """Moves slots prev_len + accepted_idx[i] to prev_len + i and sets length = prev_len + A.

        Args:
            accepted_idx: [A] int64 node indices, ascending (root first), so every destination slot
                is at or before its source.
            prev_len: committed length before the tree was written (must equal `length`).
        """
        idx = np.asarray(accepted_idx, dtype=np.int64)
        if prev_len != self.length:
            raise SpecMismatchError(
                "KV commit from a stale length.", note=f"prev_len {prev_len}, length {self.length}"
            )
        if idx.size and (idx.min() < 0 or prev_len + idx.max() >= self.capacity):
            raise CapacityError(
                "Accepted nodes lie outside the cache.",
                note=f"prev_len {prev_len}, accepted {idx.tolist()}, capacity {self.capacity}",
            )
        dst = prev_len + np.arange(idx.shape[0])
        src = prev_len + idx
        # Fancy indexing on the right materialises the sources first, so overlaps are safe.
        self.k[:, :, :, dst] = self.k[:, :, :, src]
        self.v[:, :, :, dst] = self.v[:, :, :, src]
        self.length = prev_len + idx.shape[0]

    def rewind_to(self, n: int) -> None:
        """Drops committed tokens past n (0 <= n <= length)."""
        if not 0 <= n <= self.length:
            raise SpecMismatchError(
                "Cannot rewind past the committed tokens.", note=f"n {n}, length {self.length}"
            )
        self.length = n


def commit_oracle(
    k: np.ndarray, v: np.ndarray, accepted_idx: np.ndarray, prev_len: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The slow, obvious KV commit, for tests: copies of k, v [L, B, Hkv, S, D] and the new length.

    Slot by slot, layer by layer: the committed prefix is kept, accepted node i (slot
    prev_len + accepted_idx[i]) lands at slot prev_len + i; every other slot is left unchanged.
    """
    new_k, new_v = k.copy(), v.copy()
    for layer in range(k.shape[0]):
        for i, node in enumerate(accepted_idx):
            new_k[layer, :, :, prev_len + i, :] = k[layer, :, :, prev_len + int(node), :]
            new_v[layer, :, :, prev_len + i, :] = v[layer, :, :, prev_len + int(node), :]
    return new_k, new_v, prev_len + len(accepted_idx)
