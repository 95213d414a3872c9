"""KVCache verbs vs the slow numpy oracle; buffers are never reallocated."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import CapacityError, SpecMismatchError
from runtime.kv_cache import KVCache, KVCacheSpec, commit_oracle

SPEC = KVCacheSpec(num_layers=3, num_kv_heads=2, head_dim=4, max_context=20, node_budget=8, batch=1)


def _pointer(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_layout() -> None:
    cache = KVCache(SPEC)
    assert cache.k.shape == cache.v.shape == (3, 1, 2, 28, 4)
    assert cache.k.flags.c_contiguous and cache.capacity == 28
    k0, v0 = cache.layer(1)
    assert k0.shape == (1, 2, 28, 4) and np.shares_memory(k0, cache.k) and np.shares_memory(v0, cache.v)


def test_commit_matches_oracle_over_many_rounds() -> None:
    rng = np.random.default_rng(0)
    cache = KVCache(SPEC)
    k_ptr, v_ptr, k_obj = _pointer(cache.k), _pointer(cache.v), cache.k
    length = 0
    cache.k[...] = rng.normal(size=cache.k.shape)  # stale garbage must not matter
    for _ in range(12):
        n = int(rng.integers(1, SPEC.node_budget + 1))
        if length + n > cache.capacity or length >= SPEC.max_context:
            break
        for i in range(SPEC.num_layers):
            cache.write(i, length, rng.normal(size=(1, 2, n, 4)), rng.normal(size=(1, 2, n, 4)))
        accepted = np.concatenate(
            [[0], np.sort(rng.choice(np.arange(1, n), size=int(rng.integers(0, n)), replace=False))]
        )
        want_k, want_v, want_len = commit_oracle(cache.k, cache.v, accepted, length)
        cache.commit(accepted, length)
        np.testing.assert_array_equal(cache.k[:, :, :, :want_len], want_k[:, :, :, :want_len])
        np.testing.assert_array_equal(cache.v[:, :, :, :want_len], want_v[:, :, :, :want_len])
        assert cache.length == want_len
        length = want_len
    assert cache.k is k_obj and _pointer(cache.k) == k_ptr and _pointer(cache.v) == v_ptr


def test_commit_oracle_by_hand() -> None:
    k = np.arange(6, dtype=float).reshape(1, 1, 1, 6, 1)
    new_k, _, length = commit_oracle(k, k, np.array([0, 2, 3]), prev_len=1)
    assert new_k.ravel().tolist() == [0, 1, 3, 4, 4, 5] and length == 4


def test_reset_and_rewind() -> None:
    cache = KVCache(SPEC)
    ptr = _pointer(cache.k)
    cache.commit(np.arange(5), 0)
    cache.rewind_to(2)
    assert cache.length == 2
    with pytest.raises(SpecMismatchError):
        cache.rewind_to(3)
    cache.reset()
    assert cache.length == 0 and _pointer(cache.k) == ptr


def test_errors() -> None:
    cache = KVCache(SPEC)
    with pytest.raises(SpecMismatchError, match="stale"):
        cache.commit(np.array([0]), 3)
    with pytest.raises(CapacityError):
        cache.commit(np.array([0, 28]), 0)
    with pytest.raises(CapacityError):
        cache.write(0, 26, np.zeros((1, 2, 3, 4)), np.zeros((1, 2, 3, 4)))
