"""A latency model of one speculative step (draft tree + verify) from a latency table, and the
expected-speedup tuner built on it.

Place in the data flow: table entry (`search/latency_table.py`) -> `LatencyModel` ->
`step_ms(spec, tree, past)` for any DraftSpec choice and tree -> `tune` (node budget and depth) and
`dream-s-edge profile --check N` (prediction vs measurement).

One round of the loop costs (P = committed target tokens, S = draft scratch slots, A = tokens a
round commits, k = top_k)::

    step = verify(N, P)                                  target, by (nodes, past) bilinear in the table
         + advance(A, S + P')                            draft: accepted tokens + target features
         + steps(tree) * tree_step(k, S + P' + A)        one per tree level below the root
         + tree_host * steps(tree) / steps(measured)     host work of building the tree

P' = P - (1 - visual_keep_ratio) * visual tokens: the draft keeps only part of the image tokens.
A draft call of any DraftSpec is a linear cost model over architecture features (`draft_features`:
per-call constant, LM head n V_d H_t, blocks n L (2w^2 + 2w kv + 3w f), attention n L P w,
cross-attention, concat, projections, memory), fitted by non-negative least squares on the
table's measured variants (`export/draft_variants.py`: one choice at a time around the base), on
whole draft rounds when the table has them. Per-block costs by repetition (a variant with one block
more minus the base) are in the table too (`stages.blocks`), as a cross-check of the fit.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from runtime.tree import TreeSpec

BASE_WIDTH = 576


def interp(x: float, xs, ys) -> float:
    """Linear interpolation with linear extrapolation at both ends."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    if xs.size == 1:
        return float(ys[0])
    if x <= xs[0]:
        i = 0
    elif x >= xs[-1]:
        i = xs.size - 2
    else:
        return float(np.interp(x, xs, ys))
    slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    return float(ys[i] + slope * (x - xs[i]))


def tree_steps(tree: TreeSpec) -> int:
    """Draft `tree_step` calls one tree takes."""
    if tree.kind == "dynamic":
        return tree.depth - 1
    internal = {len(c) for c in tree.choices if any(len(o) == len(c) + 1 and o[:-1] == c for o in tree.choices)}
    return len(internal)


@dataclass
class LatencyModel:
    """Predictions from one latency table entry."""

    entry: dict

    @property
    def stages(self) -> dict:
        return self.entry["stages"]

    # ---- target ---------------------------------------------------------------------------
    def verify_ms(self, nodes: int, past: int) -> float:
        rows = self.stages["verify"]
        pasts = sorted({r["past"] for r in rows})
        per_past = [interp(nodes, [r["nodes"] for r in rows if r["past"] == p],
                           [r["ms"] for r in rows if r["past"] == p]) for p in pasts]
        return interp(past, pasts, per_past)

    def prefill_ms(self, tokens: int) -> float:
        rows = self.stages["prefill"]
        return interp(tokens, [r["tokens"] for r in rows], [r["ms"] for r in rows])

    # ---- draft ----------------------------------------------------------------------------
    def _dims(self) -> tuple[int, int]:
        """(target hidden H_t, target vocabulary V) from the entry's model key ("... H576 V49155")."""
        words = {w[0]: int(w[1:]) for w in self.entry["key"]["model"].split() if w[:1] in "HV" and w[1:].isdigit()}
        return words.get("H", BASE_WIDTH), words.get("V", 0)

    def _fit(self) -> np.ndarray:
        """Least-squares cost per feature (non-negative).

        Fitted on the whole draft rounds when the table has them ("round" rows: advance, then the
        tree's tree steps back to back, as the loop runs them; their tree's host work taken off),
        else on the single calls. Single calls timed apart cost more per call than calls inside a
        round (a small draft's weights stay in the caches within a round), so rounds are preferred.
        """
        if getattr(self, "_coef", None) is None:
            rows = self.stages["draft"]
            rounds = [r for r in rows if r["call"] == "round"]
            dims = self._dims()
            if rounds:
                x = np.array([round_features(r["spec"], TreeSpec.from_dict(r["tree"]), r["new"], r["past"], dims) for r in rounds])
                y = np.array([r["ms"] - self.tree_host_ms(TreeSpec.from_dict(r["tree"])) for r in rounds])
            else:
                x = np.array([draft_features(r["spec"], r["call"], r["new"], r["past"], *dims) for r in rows])
                y = np.array([r["ms"] for r in rows])
            self._coef = nonnegative_lstsq(x, y)
        return self._coef

    def draft_call_ms(self, spec: dict, call: str, new: int, past: int) -> float:
        """One draft runner call ("advance" or "tree_step") for a DraftSpec choice (dict or DraftSpec)."""
        spec = spec if isinstance(spec, dict) else spec.to_dict()
        return float(draft_features(spec, call, new, past, *self._dims()) @ self._fit())

    def tree_host_ms(self, tree: TreeSpec) -> float:
        rows = self.stages.get("tree_host") or []
        if not rows:
            return 0.0
        ref = rows[0]
        measured = max(ref["depth"] - 1, 1)
        return ref["ms"] * tree_steps(tree) / measured * (tree.top_k / ref["top_k"]) ** 0.5

    def step_ms(self, spec, tree: TreeSpec, past: int, accepted: int | None = None, visual_tokens: int = 0) -> dict:
        """The whole speculative step; returns {"verify", "advance", "tree_steps", "tree_host", "total"} ms.

        Args:
            spec: the DraftSpec (or its dict).
            tree: the tree setting.
            past: committed target tokens P.
            accepted: tokens the previous round committed (default: round(τ) of the default curve).
            visual_tokens: image tokens in the prompt (the draft keeps `visual_keep_ratio` of them).
        """
        spec_d = spec if isinstance(spec, dict) else spec.to_dict()
        accepted = accepted if accepted is not None else max(1, round(expected_tau(tree)))
        scratch = max(tree.scratch_slots, 1)
        draft_past = scratch + past - int((1 - float(spec_d.get("visual_keep_ratio", 1.0))) * visual_tokens)
        parts = {
            "verify": self.verify_ms(tree.node_budget, past),
            "advance": self.draft_call_ms(spec_d, "advance", accepted, draft_past),
            "tree_steps": tree_steps(tree) * self.draft_call_ms(spec_d, "tree_step", tree.top_k,
                                                                draft_past + accepted),
            "tree_host": self.tree_host_ms(tree),
        }
        parts["total"] = sum(parts.values())
        return parts


FEATURES = ("call", "advance", "head", "blocks", "attention", "cross", "concat", "projections", "memory")


def draft_features(spec: dict, call: str, new: int, past: int, target_hidden: int, target_vocab: int) -> np.ndarray:
    """Cost features of one draft call, in millions of multiply-adds (plus per-call constants).

    n = new tokens, P = past slots, w = draft width, a = attention width (heads x head dim; w unless
    a DREAM-S sub-network keeps fewer heads), kv = K/V width (kv heads x head dim), f = FFN width:
    blocks n L (2 w a + 2 w kv + 3 w f); attention n L (P + n) a; head n V_d H_t; cross-attention
    n (2 w a + P a); concat n (H_t + w) w; projections in/out n H_t w when w != H_t; memory (advance:
    the target features of the accepted tokens through the memory graph) n F kv.
    """
    n, P = float(new), float(past)
    w, L = float(spec["hidden_size"]), float(spec["num_layers"])
    heads, kv_heads = float(spec["num_heads"]), float(spec.get("num_kv_heads") or 1)
    head_dim = float(spec.get("attention_head_dim") or w / heads)
    a, kv = heads * head_dim, kv_heads * head_dim
    ffn = float(spec.get("ffn_size") or -(-(8 * int(w) // 3) // 32) * 32)
    vocab = float(spec.get("draft_vocab_size") or target_vocab)
    interaction = spec["interaction"]
    advance = call == "advance"
    feats = [
        1.0,
        1.0 if advance else 0.0,
        n * vocab * target_hidden,
        n * L * (2 * w * a + 2 * w * kv + 3 * w * ffn),
        n * L * (P + n) * a,
        n * (2 * w * a + P * a) if interaction == "cross_attention" else 0.0,
        n * (target_hidden + w) * w if interaction == "concat" else 0.0,
        n * target_hidden * w * ((w != target_hidden) + (interaction != "concat" and w != target_hidden)),
        n * target_hidden * (2 * kv if interaction == "cross_attention" else w) if advance and interaction != "none" else 0.0,
    ]
    return np.array(feats) / np.array([1.0, 1.0] + [1e6] * 7)


def round_features(spec: dict, tree: TreeSpec, accepted: int, past: int, dims: tuple[int, int]) -> np.ndarray:
    """Features of a draft round: advance of `accepted` tokens plus the tree's tree steps (see step_ms)."""
    advance = draft_features(spec, "advance", accepted, past, *dims)
    step = draft_features(spec, "tree_step", tree.top_k, past + accepted, *dims)
    return advance + tree_steps(tree) * step


def nonnegative_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0 (features whose cost comes out negative are dropped)."""
    active = np.ones(x.shape[1], dtype=bool)
    coef = np.zeros(x.shape[1])
    while active.any():
        solution, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        if (solution >= 0).all():
            coef[:] = 0.0
            coef[active] = solution
            return coef
        worst = np.flatnonzero(active)[np.argmin(solution)]
        active[worst] = False
    return coef


# ---- acceptance model and tuning ------------------------------------------------------------------
DEFAULT_ALPHA = 0.55  # top-1 acceptance of a trained DREAM/EAGLE draft (EAGLE-2 papers: 0.5-0.8)


def expected_tau(tree: TreeSpec, alpha: float = DEFAULT_ALPHA) -> float:
    """τ (tokens per target pass) of a tree under the default acceptance curve.

    A level of the tree holds b = (N - 1) / depth candidates on average; the target's token is
    among them with probability 1 - (1 - alpha)^b (candidates taken as independent tries, each
    right with the top-1 rate), and a path survives depth d with the product of the levels:

        τ = 1 + sum_{d=1..D} a_b^d,    a_b = 1 - (1 - alpha) ** b

    D is at most N - 1: N nodes reach no deeper than a chain of N - 1 (a dynamic tree deeper than
    its budget drafts levels it cannot keep).
    """
    depth = min(tree.depth, tree.node_budget - 1)
    per_level = max((tree.node_budget - 1) / depth, 1.0)
    a = 1.0 - (1.0 - alpha) ** per_level
    return 1.0 + sum(a ** d for d in range(1, depth + 1))


def fit_alpha(accept_counts: list[int], tree: TreeSpec) -> float:
    """The alpha whose default curve gives the histogram's measured τ for the tree it came from."""
    counts = np.asarray(accept_counts, float)
    tau = float((counts * (np.arange(counts.size) + 1)).sum() / max(counts.sum(), 1))
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tau(tree, mid) < tau else (lo, mid)
    return (lo + hi) / 2


MAX_MIN_PROB = 0.5  # never prune candidates the draft finds more likely than not


def break_even_prob(model: LatencyModel, tree: TreeSpec, past: int, tau: float, step_ms: float) -> float:
    """The cumulative draft probability below which one more tree node costs more than it brings.

    A node whose path the target accepts with probability q adds q expected tokens to a pass and one
    verified node, which costs delta = verify(N) - verify(N - 1) ms; the pass as a whole yields tau
    tokens in `step_ms`. The node pays when q / delta >= tau / step_ms, that is

        q >= delta * tau / step_ms

    A calibrated draft's cumulative probability estimates q (the shipped draft's conditional
    acceptance follows its probability within about 0.1, `docs/measurements/default-draft/`), so
    the result is the tree's `min_prob`. Capped at MAX_MIN_PROB; 0 where a node costs nothing.
    """
    if step_ms <= 0:
        return 0.0
    delta = model.verify_ms(tree.node_budget, past) - model.verify_ms(tree.node_budget - 1, past)
    return float(min(max(delta, 0.0) * tau / step_ms, MAX_MIN_PROB))


@dataclass(frozen=True)
class TuneResult:
    """What `tune` chose: a tree (None: autoregressive) and the numbers behind it."""

    tree: TreeSpec | None
    speedup: float
    tau: float
    step_ms: float
    ar_ms: float
    message: str
    candidates: list


def tune(model: LatencyModel, spec, top_k: int, max_nodes: int, max_depth: int, max_scratch: int,
         past: int = 256, alpha: float = DEFAULT_ALPHA, min_gain: float = 1.05) -> TuneResult:
    """Picks the dynamic tree (node budget, depth) with the best expected speedup over autoregressive,
    and its `min_prob` (`break_even_prob`).

    Expected speedup = τ(N, D) * verify(1, P) / step(N, D), for the unpruned tree (pruning only
    drops nodes that cost more than they bring). Falls back to autoregressive decoding (tree None)
    when the best is below `min_gain`.
    """
    ar = model.verify_ms(1, past)
    candidates = []
    for depth in range(1, max_depth + 1):
        for nodes in range(2, max_nodes + 1):
            if nodes - 1 > top_k * depth or depth > nodes - 1 or (depth - 1) * top_k > max_scratch:
                continue  # nodes it cannot place, levels it cannot keep, or scratch it does not have
            tree = TreeSpec.dynamic(top_k=top_k, depth=depth, node_budget=nodes)
            tau = expected_tau(tree, alpha)
            step = model.step_ms(spec, tree, past, accepted=max(1, round(tau)))["total"]
            candidates.append((tau * ar / step, tree, tau, step))
    best = max(candidates, key=lambda c: c[0])
    speedup, tree, tau, step = best
    if speedup < min_gain:
        msg = (f"speculation would not pay here: best expected speedup {speedup:.2f}x (N {tree.node_budget}, "
               f"depth {tree.depth}, tau {tau:.2f}) < {min_gain:.2f}x; decode autoregressively")
        return TuneResult(None, 1.0, 1.0, ar, ar, msg, candidates)
    min_prob = round(break_even_prob(model, tree, past, tau, step), 3)
    tree = dataclasses.replace(tree, min_prob=min_prob)
    msg = (f"node budget {tree.node_budget}, depth {tree.depth}, top_k {top_k}: expected tau {tau:.2f}, "
           f"step {step:.1f} ms vs autoregressive {ar:.1f} ms -> {speedup:.2f}x; candidates below "
           f"{min_prob:.3f} cumulative draft probability cost more verify time than they bring")
    return TuneResult(tree, speedup, tau, step, ar, msg, candidates)


def find_accept_counts(report) -> tuple[list[int], dict] | None:
    """(accept_counts, tree fields) found anywhere in a bench JSON report, or None."""
    if isinstance(report, dict):
        if "accept_counts" in report:
            return list(report["accept_counts"]), report
        for value in report.values():
            found = find_accept_counts(value)
            if found:
                return found
    elif isinstance(report, list):
        for value in report:
            found = find_accept_counts(value)
            if found:
                return found
    return None


def random_specs(base_spec: dict, count: int, seed: int = 0) -> list[dict]:
    """`count` random DraftSpec choices (as dicts) from the profiled grid, none equal to the base."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        width = int(rng.choice([384, 576, 768]))
        spec = {**base_spec, "num_layers": int(rng.integers(1, 4)), "hidden_size": width,
                "num_heads": int(rng.choice([width // 64, 3])), "num_kv_heads": 3, "ffn_size": 0,
                "interaction": str(rng.choice(["cross_attention", "concat", "none"])),
                "draft_vocab_size": [None, 8192, 16384][int(rng.integers(0, 3))],
                "visual_keep_ratio": float(rng.choice([0.5, 0.75, 1.0]))}
        spec["cross_attention_position"] = 0
        spec["early_feature_block"] = 0
        if spec not in out:
            out.append(spec)
    return out


def check_predictions(model: LatencyModel, target, make_draft, specs: list[dict], tree: TreeSpec,
                      context: int = 256, repeats: int = 10, accepted: int = 4, seed: int = 0,
                      clock: str = "wall") -> list[dict]:
    """Measured vs predicted step latency (verify of the tree + one draft round) per DraftSpec.

    Every spec's step is timed in the same interleaved rounds (`search.profile.interleaved_ms`), so
    a busy spell of the machine does not land on one spec only. One step = `target.verify` of N
    nodes at `context` committed tokens, `draft.advance` of `accepted` tokens, and a whole tree
    built with `build_tree` (its `tree_step` calls and host work).

    Args:
        model: the latency model of the table entry of this backend and device.
        target: a target runner (reused for every spec).
        make_draft: spec dict -> draft runner of a draft with that spec (random weights).
        specs: the DraftSpec choices to check.
        tree: the tree setting of the steps.
    """
    from functools import partial

    from search.profile import interleaved_ms

    rng = np.random.default_rng(seed)
    vocab, n = target.vocab_size, tree.node_budget
    jobs = []
    for spec in specs:
        draft = make_draft(spec)
        verify_tokens = rng.integers(10, vocab - 10, n)
        mask = np.tril(np.ones((n, n), dtype=bool))
        tokens = rng.integers(10, vocab - 10, accepted)
        feats = rng.standard_normal((accepted, draft.feature_dim)).astype(np.float32)
        jobs.append((partial(_one_step, target, draft, tree, verify_tokens, mask, tokens, feats),
                     partial(_reset_step, target, draft, context, itertools.cycle(range(-8, 9, 2)))))
    measured = interleaved_ms(jobs, repeats, rng, clock=clock)
    rows = []
    for spec, ms in zip(specs, measured, strict=True):
        predicted = model.step_ms(spec, tree, context, accepted=accepted)["total"]
        rows.append({"spec": spec, "measured_ms": ms, "predicted_ms": predicted, "error": (predicted - ms) / ms})
    return rows


def _one_step(target, draft, tree, verify_tokens, mask, tokens, feats) -> None:
    from runtime.tree import build_tree

    target.verify(verify_tokens, target.length + np.arange(verify_tokens.size), mask)
    proposal = draft.advance(tokens, feats, tree.top_k)
    build_tree(tree, draft, int(tokens[-1]), proposal, draft.length - 1)


def _reset_step(target, draft, context: int, offsets) -> None:
    """Puts both runners at a past that moves between calls, as in a decoding loop (shapes change)."""
    from search.profile import _fake_state

    past = context + next(offsets)
    target.cache.length = past
    _fake_state(draft, past)


def format_check(rows: list[dict]) -> str:
    """The check as a plain-text table."""
    lines = [f"{'draft (layers/width/heads/interaction/vocab/keep)':52s} {'measured':>9s} {'predicted':>9s} {'error':>7s}"]
    for r in rows:
        s = r["spec"]
        name = (f"L{s['num_layers']} w{s['hidden_size']} h{s['num_heads']} {s['interaction']} "
                f"V{s['draft_vocab_size'] or 'full'} keep{s['visual_keep_ratio']}")
        lines.append(f"{name:52s} {r['measured_ms']:8.1f}ms {r['predicted_ms']:8.1f}ms {100 * r['error']:+6.1f}%")
    errors = np.abs([r["error"] for r in rows])
    lines.append(f"mean |error| {100 * errors.mean():.1f}%, max {100 * errors.max():.1f}%")
    return "\n".join(lines)
