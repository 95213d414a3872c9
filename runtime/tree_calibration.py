"""How often the target accepts a drafted candidate, as a function of the draft's own probability.

Place in the data flow: `dream-s-edge calibrate` decodes prompts with a wide tree and hands every
pass to `acceptance_samples`; `fit_calibration` turns the samples into a `TreeCalibration`, which export
writes into the manifest's draft section; the draft runner reads it back (`draft.calibration`) and
the dynamic tree builder (`runtime/tree.py`) scores candidates with `TreeCalibration.apply`.

Why: an EAGLE-2 tree keeps the N candidates of highest cumulative draft probability, which is the
expected number of accepted tokens only if the draft is calibrated. A small draft is not, and not
in one direction: measured on the shipped default draft, its best candidate is accepted more often
than its probability says (0.45 -> 0.56, 0.55 -> 0.72) and the others as often or less (0.25 -> 0.20;
docs/measurements/default-draft/calibration.json), so the raw
scores spend the budget on siblings where the next depth of the likely path pays more.

The map is a logistic one per candidate rank group (the draft's best candidate, the others), in
terms of the conditional probability p the draft gave a candidate under its parent::

    logit(accept) = a_g + b_g * logit(p)          g = top1 if the candidate is the draft's best

The identity (a 0, b 1) leaves scores as they were. The cumulative score of a node is then the sum
of calibrated log-probabilities along its path, an estimate of the probability that the target
accepts it, which is also what `min_prob` and the tuner's break-even rule compare against.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from runtime.errors import ManifestError
from runtime.tree_spec import TreeSpec

# Probabilities are clipped into [EPS, 1 - EPS] before taking logits.
EPS = 1e-6
# Groups with fewer tested candidates than this keep the identity map (too few to fit two numbers).
MIN_GROUP_SAMPLES = 30
# Fitted slopes and intercepts are kept inside these ranges, so a sparse or degenerate group (every
# candidate accepted, or none) cannot invert, flatten or saturate the draft's ranking.
SLOPE_RANGE = (0.25, 4.0)
INTERCEPT_RANGE = (-6.0, 6.0)
# Ridge weight pulling a fit toward the identity, in samples: negligible for thousands of samples,
# it keeps a separable group (every candidate rejected, say) finite.
RIDGE = 1.0


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for any z


@dataclass(frozen=True)
class TreeCalibration:
    """Per-group logistic maps from the draft's conditional probability to the target's acceptance.

    Attributes:
        top1: (a, b) for the draft's best candidate of a node (top-k column 0).
        other: (a, b) for its other candidates (columns 1 .. K - 1).
        samples: tested candidates the fit used (0 for a hand-made map).
    """

    top1: tuple[float, float] = (0.0, 1.0)
    other: tuple[float, float] = (0.0, 1.0)
    samples: int = 0

    def apply(self, logprobs: np.ndarray) -> np.ndarray:
        """Calibrated log-probabilities of top-k rows.

        Args:
            logprobs: [n, K] float log-probabilities (<= 0; -inf stays -inf), columns best first.

        Returns:
            [n, K] float64 log(accept probability), each < 0.
        """
        lp = np.minimum(np.asarray(logprobs, dtype=np.float64), np.log1p(-EPS))
        a = np.full(lp.shape[-1], self.other[0])
        b = np.full(lp.shape[-1], self.other[1])
        a[0], b[0] = self.top1
        z = a + b * (lp - np.log1p(-np.exp(lp)))  # logit(p) from log p; -inf stays -inf (b > 0)
        return -np.logaddexp(0.0, -z)  # log sigmoid(z)

    def accept_probability(self, p: np.ndarray, top1: np.ndarray) -> np.ndarray:
        """[M] calibrated acceptance of candidates with draft probability p [M] and rank group top1 [M] bool."""
        a = np.where(top1, self.top1[0], self.other[0])
        b = np.where(top1, self.top1[1], self.other[1])
        return _sigmoid(a + b * _logit(np.asarray(p, dtype=np.float64)))

    def to_dict(self) -> dict:
        return {"top1": list(self.top1), "other": list(self.other), "samples": self.samples}

    @classmethod
    def from_dict(cls, data: dict) -> TreeCalibration:
        """Reads a manifest's `draft.calibration`.

        Raises:
            ManifestError: a missing field or a pair that is not two finite numbers with a positive slope.
        """
        try:
            pairs = [tuple(float(x) for x in data[key]) for key in ("top1", "other")]
            samples = int(data.get("samples", 0))
        except (KeyError, TypeError, ValueError) as error:
            raise ManifestError("The manifest's draft calibration is malformed.", note=f"{data!r}: {error}",
                                hint="re-run `dream-s-edge calibrate --artifacts DIR`") from error
        for name, pair in zip(("top1", "other"), pairs, strict=True):
            if len(pair) != 2 or not np.all(np.isfinite(pair)) or pair[1] <= 0:
                raise ManifestError("The manifest's draft calibration is malformed.",
                                    note=f"draft.calibration.{name} = {list(pair)}; want [a, b] with b > 0",
                                    hint="re-run `dream-s-edge calibrate --artifacts DIR`")
        return cls(top1=pairs[0], other=pairs[1], samples=samples)


def acceptance_samples(parents: np.ndarray, tokens: np.ndarray, scores: np.ndarray, valid: np.ndarray,
                 target_ids: np.ndarray) -> np.ndarray:
    """The candidates one greedy verify pass tested, as calibration samples.

    Walks the path the target accepted from the root: every valid child of a node on it was tested
    against the target's greedy token at that node. Siblings are ranked by score, so the best one is
    the draft's best candidate (a child never outscores the draft's top-1 of the same parent).

    Args:
        parents: [N] int64 parent node (-1 at the root); `TreeBuffers.parents`.
        tokens: [N] int64 node tokens.
        scores: [N] cumulative draft log-probabilities (uncalibrated).
        valid: [N] bool.
        target_ids: [N] int64 the target's greedy token after each node (argmax of its logits).

    Returns:
        [M, 3] float64 rows (conditional draft probability, is the draft's best, accepted).
    """
    rows: list[tuple[float, float, float]] = []
    node = 0
    while True:
        kids = np.flatnonzero((parents == node) & valid)
        if kids.size == 0:
            break
        kids = kids[np.argsort(-scores[kids], kind="stable")]
        hit = kids[tokens[kids] == target_ids[node]]
        for rank, kid in enumerate(kids):
            rows.append((float(np.exp(scores[kid] - scores[node])), float(rank == 0), float(kid == hit[0] if hit.size else 0)))
        if hit.size == 0:
            break
        node = int(hit[0])
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def _fit_group(p: np.ndarray, accepted: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """(a, b) of logit(accept) = a + b logit(p), by Newton's method on the ridge-penalised likelihood."""
    x = np.stack([np.ones_like(p), _logit(p)], axis=1)  # [M, 2]
    identity = np.array([0.0, 1.0])
    w = identity.copy()
    for _ in range(iterations):
        prob = _sigmoid(x @ w)
        hessian = (x * (prob * (1.0 - prob))[:, None]).T @ x + RIDGE * np.eye(2)
        step = np.linalg.solve(hessian, x.T @ (accepted - prob) - RIDGE * (w - identity))
        w = w + step
        if np.abs(step).max() < 1e-8:
            break
    return float(np.clip(w[0], *INTERCEPT_RANGE)), float(np.clip(w[1], *SLOPE_RANGE))


def fit_calibration(samples: np.ndarray) -> TreeCalibration:
    """Fits the two logistic maps to samples from `acceptance_samples`.

    Args:
        samples: [M, 3] rows (conditional draft probability, is the draft's best, accepted).

    Returns:
        The calibration; a group with fewer than MIN_GROUP_SAMPLES samples keeps the identity.
    """
    samples = np.asarray(samples, dtype=np.float64).reshape(-1, 3)
    pairs = []
    for best in (1.0, 0.0):
        group = samples[samples[:, 1] == best]
        pairs.append(_fit_group(group[:, 0], group[:, 2]) if len(group) >= MIN_GROUP_SAMPLES else (0.0, 1.0))
    return TreeCalibration(top1=pairs[0], other=pairs[1], samples=int(samples.shape[0]))


def reliability(samples: np.ndarray, calibration: TreeCalibration | None = None,
                edges: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
                ) -> list[dict]:
    """Acceptance against predicted probability, per probability bin and rank group.

    Args:
        samples: [M, 3] rows from `acceptance_samples`.
        calibration: predict with it (None: the draft's raw probability).
        edges: bin edges over the predicted probability.

    Returns:
        One row per non-empty bin: {"group", "low", "high", "count", "predicted", "accepted"}.
    """
    samples = np.asarray(samples, dtype=np.float64).reshape(-1, 3)
    p, best, accepted = samples[:, 0], samples[:, 1] == 1.0, samples[:, 2]
    predicted = p if calibration is None else calibration.accept_probability(p, best)
    rows = []
    for name, group in (("top1", best), ("other", ~best)):
        bins = np.clip(np.digitize(predicted[group], edges[1:-1]), 0, len(edges) - 2)
        for i in range(len(edges) - 1):
            chosen = bins == i
            if chosen.any():
                rows.append({"group": name, "low": edges[i], "high": edges[i + 1], "count": int(chosen.sum()),
                             "predicted": float(predicted[group][chosen].mean()),
                             "accepted": float(accepted[group][chosen].mean())})
    return rows


def log_loss(samples: np.ndarray, calibration: TreeCalibration | None = None) -> float:
    """Mean negative log-likelihood of the acceptances under the raw or calibrated probabilities."""
    samples = np.asarray(samples, dtype=np.float64).reshape(-1, 3)
    p = samples[:, 0] if calibration is None else calibration.accept_probability(samples[:, 0], samples[:, 1] == 1.0)
    p = np.clip(p, EPS, 1.0 - EPS)
    y = samples[:, 2]
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def sampling_tree(spec: TreeSpec) -> TreeSpec:
    """The tree calibration decodes with: the spec's shape with no pruning, so candidates of every
    probability get tested."""
    return replace(spec, min_prob=0.0)
