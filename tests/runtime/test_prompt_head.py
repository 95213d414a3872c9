"""HeadCache: which leading prompt tokens a runner may keep from the previous prompt."""

from __future__ import annotations

import numpy as np

from runtime.prompt_head import HeadCache, shared_prefix

IMAGE = 99


def _stored(ids, head: int) -> HeadCache:
    cache = HeadCache()
    cache.store(np.array(ids), np.arange(len(ids) * 2, dtype=np.float32).reshape(len(ids), 2), head)
    return cache


def test_shared_prefix() -> None:
    assert shared_prefix(np.array([1, 2, 3]), np.array([1, 2, 4, 5])) == 2
    assert shared_prefix(np.array([1, 2]), np.array([1, 2, 3])) == 2
    assert shared_prefix(np.array([7]), np.array([1])) == 0
    assert shared_prefix(np.zeros(0, np.int64), np.array([1])) == 0


def test_nothing_to_reuse_before_a_prefill_or_after_clear() -> None:
    assert HeadCache().reusable(np.array([1, 2, 3, 4]), head=3, image_token_id=None) == 0
    cache = _stored([1, 2, 3, 4], head=3)
    cache.clear()
    assert cache.reusable(np.array([1, 2, 3, 4]), head=3, image_token_id=None) == 0


def test_reuse_stops_at_the_head_the_image_and_the_last_token() -> None:
    cache = _stored([1, 2, 3, 8, 9], head=3)
    assert cache.ids.tolist() == [1, 2, 3] and cache.features.shape == (3, 2)
    assert cache.reusable(np.array([1, 2, 3, 8, 9]), head=3, image_token_id=None) == 3  # the question is not kept
    assert cache.reusable(np.array([1, 2, 5, 6]), head=3, image_token_id=None) == 2  # where the ids part
    assert cache.reusable(np.array([1, 2, 3]), head=3, image_token_id=None) == 2  # one token left to run
    assert cache.reusable(np.array([1, IMAGE, 3, 4]), head=3, image_token_id=IMAGE) == 1  # pixels differ
    np.testing.assert_array_equal(cache.features_for(2), [[0, 1], [2, 3]])
