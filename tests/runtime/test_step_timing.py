"""runtime/step_timing.py on the tiny export, and the session settings the timings rest on."""

from __future__ import annotations

import numpy as np

from runtime.manifest import Manifest
from runtime.ort_backend import OrtGraph
from runtime.ort_draft import OrtDraftRunner
from runtime.ort_target import OrtTargetRunner
from runtime.session import tree_from_manifest
from runtime.step_timing import format_table, main, measure_steps


def test_measure_steps_table(exported_tiny, capsys) -> None:
    folder, _ = exported_tiny
    manifest = Manifest.load(folder)
    target = OrtTargetRunner(manifest, threads=1)
    draft = OrtDraftRunner(manifest, target.embeddings, threads=1)
    tree = tree_from_manifest(manifest["tree"])
    times = measure_steps(target, draft, tree, context=20, counts=(4, 8), repeats=2, accepted=2)
    assert sorted(times.verify) == [1, 4, 8]
    assert all(len(c.wall) == 2 and len(c.cpu) == 2 for c in times.verify.values())
    assert set(times.draft) == {"round", "advance", "tree_steps", "tree_host"}
    assert times.ratio(times.verify[1]) == 1.0
    assert times.draft["round"].wall_ms >= times.draft["advance"].wall_ms
    table = format_table(times)
    assert "target verify N=8" in table and "draft tree_steps" in table
    main([str(folder), "--context", "12", "--repeats", "1", "--threads", "1", "--counts", "1,2"])
    assert "target verify N=2" in capsys.readouterr().out


def test_sessions_do_not_spin_by_default(exported_tiny, monkeypatch) -> None:
    folder, _ = exported_tiny
    manifest = Manifest.load(folder)
    path, contract = manifest.path("decoder"), manifest.contract("decoder")

    def spinning(graph: OrtGraph) -> str:
        return graph.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    monkeypatch.delenv("DREAM_S_EDGE_ORT_SPIN", raising=False)
    assert spinning(OrtGraph(path, "decoder", contract, threads=1)) == "0"
    assert spinning(OrtGraph(path, "decoder", contract, threads=1, spin=True)) == "1"
    monkeypatch.setenv("DREAM_S_EDGE_ORT_SPIN", "1")
    assert spinning(OrtGraph(path, "decoder", contract, threads=1)) == "1"


def test_prefill_computes_only_the_tail_logits(exported_tiny) -> None:
    """The decoder returns logits for the last min(T, node_budget) tokens; prefill's last row is
    the same as a step that ends at that token."""
    folder, _ = exported_tiny
    manifest = Manifest.load(folder)
    target = OrtTargetRunner(manifest, threads=1)
    budget = target.limits.node_budget
    count = budget + 5
    rng = np.random.default_rng(0)
    embeds = target._lookup(rng.integers(5, target.vocab_size - 5, count))
    causal = np.tril(np.ones((count, count), dtype=bool))
    logits, features = target._step(embeds, np.arange(count, dtype=np.int64), causal)
    assert logits.shape == (budget, target.vocab_size) and features.shape[0] == count
    target.cache.length = count - 1  # the same last token, as a one-token step after the others
    last, _ = target._step(embeds[-1:], np.array([count - 1]), np.ones((1, 1), dtype=bool))
    np.testing.assert_allclose(logits[-1], last[0], atol=1e-4, rtol=1e-4)
