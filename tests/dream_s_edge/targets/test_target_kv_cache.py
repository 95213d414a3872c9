"""StaticKVCache: writes at the step offset, commit against a NumPy reference, fixed buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dream_s_edge.targets.kv_cache import StaticKVCache
from runtime.errors import CapacityError


def filled_cache(max_len=16, layers=2):
    cache = StaticKVCache(layers, 1, 2, max_len, 4)
    for index, layer in enumerate(cache.layers):
        slots = torch.arange(max_len, dtype=torch.float32)[None, None, :, None]
        layer.keys.copy_(slots.expand_as(layer.keys) + 100 * index)
        layer.values.copy_(-slots.expand_as(layer.values) - 100 * index)
    return cache


def test_update_writes_at_offset_and_returns_full_buffers():
    cache = StaticKVCache(2, 1, 2, 10, 4)
    keys = torch.ones(1, 2, 3, 4)
    cache.begin_step(4, 3)
    full_keys, full_values = cache.update(keys, 2 * keys, layer_idx=1)
    assert full_keys is cache.layers[1].keys and full_keys.shape == (1, 2, 10, 4)
    assert full_keys[0, 0, :, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert full_values[0, 0, 5, 0] == 2


def test_commit_matches_numpy_reference_and_keeps_buffers():
    cache = filled_cache()
    pointers = [layer.keys.data_ptr() for layer in cache.layers]
    start, accepted = 5, np.array([0, 2, 3, 6])
    expected = cache.layers[1].keys[0, 0, :, 0].numpy().copy()
    expected[start : start + len(accepted)] = expected[start + accepted]
    cache.commit(start, torch.from_numpy(accepted))
    assert cache.length == start + len(accepted)
    np.testing.assert_array_equal(cache.layers[1].keys[0, 0, :, 0].numpy(), expected)
    np.testing.assert_array_equal(cache.layers[1].values[0, 0, :, 0].numpy(), -expected)
    assert [layer.keys.data_ptr() for layer in cache.layers] == pointers
    assert cache.get_seq_length() == cache.length


def test_capacity_rewind_and_reset():
    cache = filled_cache(max_len=8)
    with pytest.raises(CapacityError, match="too small"):
        cache.begin_step(6, 3)
    cache.advance(0, 6)
    cache.rewind_to(4)
    assert cache.length == 4
    cache.reset()
    assert cache.length == 0 and cache.layers[0].keys.shape == (1, 2, 8, 4)
