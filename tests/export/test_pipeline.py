"""`export_artifacts` with a pruned draft vocabulary (`dream-s-edge export --draft-vocab N`)."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import ExportError, ModelLoadError


def _saved_draft(adapter, folder, counts=None):
    from dream_s_edge.draft.checkpoint import save_draft
    from dream_s_edge.draft.vocab_prune import save_token_counts
    from dream_s_edge.runners.draft_factory import untrained_draft

    model = untrained_draft(adapter, seed=2)
    save_draft(folder, model, model.spec)
    if counts is not None:
        save_token_counts(folder, counts)
    return model


def test_pruned_draft_exports_and_stays_lossless(exported_tiny, tiny_tree, image, tmp_path) -> None:
    from export.pipeline import ExportConfig, export_artifacts
    from runtime.session import Session

    adapter = exported_tiny[1]
    vocab = adapter.spec.vocab_size
    counts = np.random.default_rng(0).integers(0, 50, vocab)
    _saved_draft(adapter, tmp_path / "draft", counts)
    out = export_artifacts(ExportConfig(out=tmp_path / "art", max_context=64, draft=str(tmp_path / "draft"),
                                        tree=tiny_tree, draft_vocab=40), adapter=adapter)
    session = Session.from_dir(out, threads=1)
    d2t = session.draft.d2t
    assert d2t.shape == (40,) and session.manifest["draft"]["spec"]["draft_vocab_size"] == 40
    assert counts[d2t].min() >= np.delete(counts, d2t).max()
    for question in ("What is it?", "hi"):
        spec = session.generate(image, question, max_new_tokens=16)
        ar = session.generate(image, question, max_new_tokens=16, speculative=False)
        np.testing.assert_array_equal(spec.tokens, ar.tokens)


def test_pruning_needs_counts_and_a_trained_draft(exported_tiny, tiny_tree, tmp_path) -> None:
    from export.pipeline import ExportConfig, export_artifacts

    adapter = exported_tiny[1]
    _saved_draft(adapter, tmp_path / "draft")
    with pytest.raises(ModelLoadError, match="token_counts.npy"):
        export_artifacts(ExportConfig(out=tmp_path / "a", max_context=64, draft=str(tmp_path / "draft"),
                                      tree=tiny_tree, draft_vocab=40), adapter=adapter)
    with pytest.raises(ExportError, match="trained draft"):
        export_artifacts(ExportConfig(out=tmp_path / "b", max_context=64, draft="untrained", tree=tiny_tree,
                                      draft_vocab=40), adapter=adapter)
