"""Tree calibration: the logistic maps, the fit, the samples one pass gives, and trees scored with it."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import ManifestError
from runtime.runner import Proposal
from runtime.tree import TreeSpec, build_tree
from runtime.tree_calibration import (
    MIN_GROUP_SAMPLES,
    TreeCalibration,
    acceptance_samples,
    fit_calibration,
    log_loss,
    reliability,
    sampling_tree,
)


def _synthetic(calibration: TreeCalibration, count: int, seed: int = 0) -> np.ndarray:
    """[M, 3] samples whose acceptance follows `calibration` exactly."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, count)
    best = rng.random(count) < 0.5
    accepted = rng.random(count) < calibration.accept_probability(p, best)
    return np.stack([p, best.astype(float), accepted.astype(float)], axis=1)


def test_identity_leaves_log_probs_alone() -> None:
    lp = np.log(np.array([[0.7, 0.2, 0.05], [0.99, 0.001, 1e-4]]))
    np.testing.assert_allclose(TreeCalibration().apply(lp), lp, rtol=1e-9, atol=1e-9)
    out = TreeCalibration(top1=(1.0, 1.0)).apply(np.array([[-np.inf, 0.0, np.log(0.5)]]))
    assert np.isneginf(out[0, 0]) and np.all(out[0, 1:] < 0)  # -inf stays, nothing reaches 0


def test_groups_are_the_best_column_and_the_others() -> None:
    calibration = TreeCalibration(top1=(1.0, 1.0), other=(-1.0, 1.0))
    lp = np.log(np.full((2, 3), 0.3))
    p = np.exp(calibration.apply(lp))
    logit = np.log(0.3 / 0.7)
    np.testing.assert_allclose(p[:, 0], 1 / (1 + np.exp(-(logit + 1.0))))
    np.testing.assert_allclose(p[:, 1:], 1 / (1 + np.exp(-(logit - 1.0))))


def test_fit_recovers_the_maps_behind_synthetic_acceptances() -> None:
    truth = TreeCalibration(top1=(0.7, 1.2), other=(-0.3, 0.9))
    fitted = fit_calibration(_synthetic(truth, 20_000))
    np.testing.assert_allclose(fitted.top1, truth.top1, atol=0.08)
    np.testing.assert_allclose(fitted.other, truth.other, atol=0.08)
    assert fitted.samples == 20_000
    samples = _synthetic(truth, 4000, seed=1)  # held-out samples: the fit predicts them better than raw p
    assert log_loss(samples, fitted) < log_loss(samples)


def test_a_group_with_too_few_samples_keeps_the_identity() -> None:
    samples = _synthetic(TreeCalibration(top1=(1.0, 1.0), other=(1.0, 1.0)), 4000)
    few_others = np.concatenate([samples[samples[:, 1] == 1.0], samples[samples[:, 1] == 0.0][: MIN_GROUP_SAMPLES - 1]])
    fitted = fit_calibration(few_others)
    assert fitted.other == (0.0, 1.0) and fitted.top1 != (0.0, 1.0)


def test_reliability_bins_every_sample_once() -> None:
    samples = _synthetic(TreeCalibration(top1=(0.5, 1.0)), 3000)
    for calibration in (None, fit_calibration(samples)):
        rows = reliability(samples, calibration)
        assert sum(r["count"] for r in rows) == 3000
        assert {r["group"] for r in rows} == {"top1", "other"}
        assert all(r["low"] <= r["predicted"] <= r["high"] and 0 <= r["accepted"] <= 1 for r in rows)


def test_acceptance_samples_walk_the_accepted_path() -> None:
    #  root -+- [1] a (p .6) -+- [3] c (p .5) -- [5] e (p .9)
    #        |                '- [4] d (p .3)
    #        '- [2] b (p .3)
    parents = np.array([-1, 0, 0, 1, 1, 3])
    tokens = np.array([9, 10, 11, 12, 13, 14])
    cond = np.array([1.0, 0.6, 0.3, 0.5, 0.3, 0.9])
    scores = np.log(cond)
    for j in range(1, 6):
        scores[j] += scores[parents[j]]
    valid = np.ones(6, dtype=bool)
    # the target takes a after the root, then d (not c), and d has no children: the walk ends there
    target_ids = np.array([10, 13, 0, 0, 0, 0])
    rows = acceptance_samples(parents, tokens, scores, valid, target_ids)
    np.testing.assert_allclose(rows, [[0.6, 1, 1], [0.3, 0, 0], [0.5, 1, 0], [0.3, 0, 1]])
    # a rejection at the root tests only the root's children
    rows = acceptance_samples(parents, tokens, scores, valid, np.array([99, 0, 0, 0, 0, 0]))
    np.testing.assert_allclose(rows, [[0.6, 1, 0], [0.3, 0, 0]])
    # invalid padding is never a sample
    valid[2] = False
    assert acceptance_samples(parents, tokens, scores, valid, target_ids).shape == (3, 3)


def test_manifest_form_round_trips_and_refuses_bad_pairs() -> None:
    calibration = TreeCalibration(top1=(0.7, 1.2), other=(-0.2, 0.95), samples=123)
    assert TreeCalibration.from_dict(calibration.to_dict()) == calibration
    for bad in ({"top1": [0.1, 1.0]}, {"top1": [0.1], "other": [0, 1]}, {"top1": [0.1, -1.0], "other": [0, 1]},
                {"top1": ["x", 1], "other": [0, 1]}, {"top1": [float("nan"), 1], "other": [0, 1]}):
        with pytest.raises(ManifestError, match="calibration"):
            TreeCalibration.from_dict(bad)


def test_sampling_tree_keeps_the_shape_without_pruning() -> None:
    spec = TreeSpec.dynamic(top_k=4, depth=8, node_budget=16, min_prob=0.05)
    assert sampling_tree(spec) == TreeSpec.dynamic(top_k=4, depth=8, node_budget=16)


class _ConfidentChainDraft:
    """Every node's best continuation has probability 0.5, its three others 0.15 each."""

    padded_steps = False

    def __init__(self, calibration=None):
        self.calibration = calibration

    def tree_step(self, tokens, positions, slots, tree_mask, top_k):
        n = tokens.shape[0]
        ids = 100 * (positions[:, None] - positions.min() + 1) + np.arange(top_k)[None] + 10 * slots[:, None]
        return Proposal(ids.astype(np.int64), np.tile(np.log(np.float32([0.5, 0.15, 0.15, 0.15])), (n, 1)))


def _tree(draft):
    spec = TreeSpec.dynamic(top_k=4, depth=8, node_budget=12)
    root = Proposal(np.array([[1, 2, 3, 4]]), np.log(np.float32([[0.5, 0.15, 0.15, 0.15]])))
    return build_tree(spec, draft, 7, root, 20)


def test_a_calibrated_draft_spends_the_budget_deeper_on_its_best_candidates() -> None:
    raw = _tree(_ConfidentChainDraft())
    same = _tree(_ConfidentChainDraft(TreeCalibration()))
    np.testing.assert_array_equal(raw.tokens, same.tokens)
    np.testing.assert_array_equal(raw.parents, same.parents)
    # the target accepts the best candidate more often (0.5 -> 0.82) and the others less (0.15 -> 0.06)
    calibrated = _tree(_ConfidentChainDraft(TreeCalibration(top1=(1.5, 1.0), other=(-1.0, 1.0))))
    assert calibrated.depth.max() > raw.depth.max()
    assert calibrated.size == raw.size and calibrated.valid.all()
    children = calibrated.scores[1:] <= calibrated.scores[calibrated.parents[1:]] + 1e-12
    assert children.all()  # a child never scores above its parent: the tree stays closed under parents
