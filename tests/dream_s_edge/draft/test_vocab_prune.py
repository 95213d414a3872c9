"""Pruning a trained draft's vocabulary: the kept tokens' logits are the original ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dream_s_edge.draft import load_draft, save_draft
from dream_s_edge.draft.vocab_prune import (
    TOKEN_COUNTS_FILE,
    load_token_counts,
    prune_vocabulary,
    save_token_counts,
)
from runtime.errors import ModelLoadError, SpecMismatchError
from tests.dream_s_edge.draft.test_model import V, make_draft, sample_inputs


def _counts(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 100, V)


@pytest.mark.parametrize("variant", ["cross", "cross-deep-narrow", "concat-eagle3"])
def test_pruned_logits_are_the_kept_columns(variant):
    model = make_draft(variant)
    counts = _counts()
    pruned = prune_vocabulary(model, counts, 12)
    before = model.d2t.tolist() if model.d2t is not None else list(range(V))
    kept = pruned.d2t.tolist()
    assert len(kept) == 12 and kept == sorted(kept) and set(kept) <= set(before)
    dropped = sorted(set(before) - set(kept))
    assert min(counts[kept]) >= max(counts[dropped])  # the most frequent ones stay
    ids, features = sample_inputs(model)
    with torch.no_grad():
        full, small = model(model.embed(ids), features), pruned(pruned.embed(ids), features)
    columns = [before.index(t) for t in kept]
    assert torch.equal(small.features, full.features)
    assert torch.allclose(small.logits, full.logits[..., columns], atol=1e-12)
    assert pruned.spec.draft_vocab_size == 12 and model.spec.draft_vocab_size != 12


def test_pruning_refuses_growth_and_wrong_counts():
    model = make_draft("cross-deep-narrow")  # 30 tokens
    with pytest.raises(SpecMismatchError, match="only shrink"):
        prune_vocabulary(model, _counts(), 31)
    with pytest.raises(SpecMismatchError, match="at least one"):
        prune_vocabulary(model, _counts(), 0)
    with pytest.raises(SpecMismatchError, match="target vocabulary"):
        prune_vocabulary(model, _counts()[:-1], 10)


def test_pruned_draft_saves_and_loads(tmp_path):
    model = make_draft("cross")
    pruned = prune_vocabulary(model, _counts(), 20)
    save_draft(tmp_path, pruned, pruned.spec)
    loaded = load_draft(tmp_path, model.embed_weight, model.lm_head_weight)
    assert torch.equal(loaded.d2t, pruned.d2t) and loaded.spec == pruned.spec


def test_token_counts_round_trip_and_errors(tmp_path):
    counts = _counts()
    save_token_counts(tmp_path, torch.as_tensor(counts))
    assert np.array_equal(load_token_counts(tmp_path, V), counts)
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_token_counts(tmp_path, V + 1)
    (tmp_path / TOKEN_COUNTS_FILE).unlink()
    with pytest.raises(ModelLoadError, match=TOKEN_COUNTS_FILE):
        load_token_counts(tmp_path, V)


def test_converting_a_draft_keeps_its_counts(tmp_path):
    from dream_s_edge.draft.checkpoint import convert_draft

    model = make_draft("cross", dtype=torch.float32)
    save_draft(tmp_path / "fp32", model, model.spec)
    save_token_counts(tmp_path / "fp32", _counts())
    convert_draft(tmp_path / "fp32", tmp_path / "fp16", "float16")
    assert np.array_equal(load_token_counts(tmp_path / "fp16", V), _counts())
