"""`dream-s-edge tau-check`: how well the cheap τ̂ ranks sub-networks against τ from the real loop.

Data flow::

    supernet folder --load_supernet--> sub-networks: the largest and smallest of each branch, then
        seeded random draws from the grid (`subnets` in all)
    calibration prompts --record_prompts (target once per prompt)--> records --estimate_tau--> τ̂
    measurement prompts --measure_tau (dream_s_edge/distill/validate.py: the real speculative loop,
        target and draft both running)--> τ
    --> Spearman's ρ and Kendall's τ_b of (τ̂, τ) over the sub-networks --> OUT.json (+ OUT.png)

By default the two prompt sets are disjoint held-out prompts, so the figure says how well τ̂ on a
few calibration prompts predicts the ranking on prompts it never saw (with `same_prompts`, both run
on the calibration prompts, where a greedy replay must agree with the loop up to float ties). The
correlations come from scipy when it is installed, else from this module's own implementation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.search import rank_correlation, tree_to_dict

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class TauCheckConfig:
    """What `run_tau_check` needs; the CLI fills it from flags. Empty grid fields: the supernet's
    training space (see `search.run.resolve_space`)."""

    supernet: Path  # supernet folder (`train --supernet` or `search.supernet.save_supernet`)
    out: Path  # JSON report (a scatter plot is written beside it, .png)
    model: str = "default"  # target: 'default' or a local HF folder
    subnets: int = 12  # sub-networks compared (at least 10 for the figure)
    prompts: int = 8  # calibration prompts of τ̂ (held-out scene QA, photos and open scenes in turn)
    measure_prompts: int = 8  # prompts τ is measured on (after the calibration ones, disjoint)
    same_prompts: bool = False  # measure τ on the calibration prompts instead
    max_new_tokens: int = 32
    max_context: int = 1024
    seed: int = 0  # prompt seed and sub-network draw seed
    top_k: int = 4  # the tree both run with
    depth: int = 5
    node_budget: int = 16
    num_layers: tuple[int, ...] = ()  # the grid sub-networks are drawn from (SearchSpace fields)
    head_ratios: tuple[float, ...] = ()
    ffn_ratios: tuple[float, ...] = ()
    injection_layers: int | None = None
    visual_keep_ratios: tuple[float, ...] = ()
    draft_vocab_sizes: tuple[int | None, ...] = ()
    interactions: tuple[str, ...] = ()


def pick_subnets(space, count: int, seed: int) -> list:
    """The largest and smallest of each branch, then distinct seeded draws, `count` in all (or the grid)."""
    grid = space.choices()
    picked = []
    for branch in space.interactions:
        for choice in (space.largest(branch), space.smallest(branch)):
            if choice not in picked:
                picked.append(choice)
    rest = [c for c in grid if c not in picked]
    order = np.random.default_rng(seed).permutation(len(rest))
    picked += [rest[int(i)] for i in order[: max(0, count - len(picked))]]
    return picked[:count]


def kendall_tau_b(a, b) -> float:
    """Kendall's τ_b of two equally long sequences (ties counted as scipy does); NaN if one is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    i, j = np.triu_indices(a.size, k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    concordant = float((da * db).sum())
    pairs_a, pairs_b = float((da != 0).sum()), float((db != 0).sum())
    if pairs_a == 0 or pairs_b == 0:
        return float("nan")
    return concordant / np.sqrt(pairs_a * pairs_b)


def rank_correlations(a, b) -> dict:
    """{"spearman", "kendall", "method"}: scipy's where installed, else `rank_correlation` and `kendall_tau_b`.

    A correlation that is undefined (a constant sequence, e.g. every τ equal to 1) is None.
    """
    if np.ptp(np.asarray(a, float)) == 0 or np.ptp(np.asarray(b, float)) == 0:
        return {"spearman": None, "kendall": None, "method": "undefined: a constant sequence"}
    try:
        import scipy
        from scipy import stats
    except ImportError:
        values = rank_correlation(a, b), kendall_tau_b(a, b)
        method = "numpy"
    else:
        values = stats.spearmanr(a, b).statistic, stats.kendalltau(a, b).statistic
        method = f"scipy {scipy.__version__}"
    spearman, kendall = (None if not np.isfinite(v) else float(v) for v in values)
    return {"spearman": spearman, "kendall": kendall, "method": method}


def run_tau_check(config: TauCheckConfig) -> dict:
    """Measures τ̂ and τ of `config.subnets` sub-networks; writes and returns the report.

    Raises:
        DraftSpecError: the supernet folder is not one, or the grid does not fit it.
    """
    import torch

    from dream_s_edge.distill.prompts import mixed_heldout_prompts
    from dream_s_edge.generation import TreeOptions
    from search.run import load_net_and_space, record_prompts
    from search.supernet import param_count

    started = time.perf_counter()
    adapter, net, space = load_net_and_space(config)
    choices = pick_subnets(space, config.subnets, config.seed)
    if len(choices) < 10:
        logger.warning("only %d sub-networks in the grid; a rank correlation over fewer than 10 says little",
                       len(choices))
    measure_count = 0 if config.same_prompts else config.measure_prompts
    specs = mixed_heldout_prompts(config.prompts + measure_count, config.seed)
    calibration = specs[: config.prompts]
    measured_on = calibration if config.same_prompts else specs[config.prompts: config.prompts + measure_count]
    tree = TreeOptions(top_k=config.top_k, depth=config.depth, node_budget=config.node_budget)
    records = record_prompts(adapter, space, calibration, config.max_new_tokens, config.max_context, tree.depth)
    recorded = time.perf_counter()
    rows, seconds = [], {"record": recorded - started, "estimate": 0.0, "measure": 0.0}
    for choice in choices:
        with torch.inference_mode():
            row, spent = _compare(adapter, net, choice, records, measured_on, tree, config)
        row["params"] = param_count(net.subnet_spec(choice))
        rows.append(row)
        seconds["estimate"] += spent[0]
        seconds["measure"] += spent[1]
        logger.info("%s: tau_hat %.3f, tau %.3f", choice, row["tau_hat"], row["tau"])
    report = {
        "format_version": FORMAT_VERSION, "supernet": str(config.supernet), "model": config.model,
        **rank_correlations([r["tau_hat"] for r in rows], [r["tau"] for r in rows]),
        "subnets": rows, "tree": tree_to_dict(tree.spec()), "space": dataclasses.asdict(space),
        "calibration_prompts": [p.to_dict() for p in calibration],
        "measure_prompts": [p.to_dict() for p in measured_on], "same_prompts": config.same_prompts,
        "max_new_tokens": config.max_new_tokens, "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    report = json.loads(json.dumps(report))  # what the file holds (lists, not tuples)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    report["plot"] = plot_tau_check(report, out.with_suffix(".png"))
    return report


def _compare(adapter, net, choice, records, measure_specs, tree, config: TauCheckConfig) -> tuple[dict, tuple]:
    """τ̂ (replay on the records) and τ (the real loop on `measure_specs`) of one sub-network."""
    from dream_s_edge.distill.validate import measure_tau
    from dream_s_edge.runners.draft_factory import draft_runner
    from search.supernet import build_subnet
    from search.tau_estimate import estimate_tau

    draft = build_subnet(net, choice).eval()
    t0 = time.perf_counter()
    runner = draft_runner(adapter, draft, config.max_context, tree.spec())
    est = estimate_tau(records, runner, draft.spec.feature_layers, tree.spec(), config.max_new_tokens,
                       adapter.spec.eos_token_ids)
    t1 = time.perf_counter()
    real = measure_tau(adapter, draft, measure_specs, tree, config.max_new_tokens, config.max_context)
    t2 = time.perf_counter()
    row = {"choice": choice.to_dict(), "tau_hat": est.tau, "tau": real["tau"],
           "tau_hat_accept_counts": est.accept_counts, "accept_counts": real["accept_counts"]}
    return row, (t1 - t0, t2 - t1)


def format_correlation(value: float | None) -> str:
    """A correlation for people: two decimals, or "undefined"."""
    return "undefined" if value is None else f"{value:.3f}"


def plot_tau_check(report: dict, path) -> str:
    """Measured τ against τ̂, one point per sub-network (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["subnets"]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter([r["tau_hat"] for r in rows], [r["tau"] for r in rows], s=18)
    low = min(min(r["tau_hat"], r["tau"]) for r in rows)
    high = max(max(r["tau_hat"], r["tau"]) for r in rows)
    ax.plot([low, high], [low, high], color="0.6", lw=0.8, ls="--")
    ax.set(xlabel="τ̂ (replayed, calibration prompts)", ylabel="τ (real loop)",
           title=f"Spearman {format_correlation(report['spearman'])}, Kendall {format_correlation(report['kendall'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
