"""Hardware-aware search over the supernet's sub-networks and tree settings.

Place in the data flow::

    latency table entry (search/latency_table.py) --LatencyModel--> step_ms(spec, tree, past)
    supernet + target records --estimate_tau (search/tau_estimate.py)--> τ̂(choice, tree)
        --> search_drafts (exhaustive, constrained) --> SearchResult (JSON) + candidates (Pareto data)

Every (sub-network, tree) pair is scored by its predicted speedup over autoregressive decoding::

    speedup = τ̂ · t_AR / (t_draft_tree + t_verify)

with t_AR = verify(1 node, P) and the step cost (advance, the tree's draft steps, its host work and
the verify of N nodes) from the device's table. Constraints (trainable parameters, predicted step
latency) drop candidates before the ranking. The result is one typed, serialisable drafting config:
the chosen sub-network (choice and DraftSpec), the tree, the predicted figures and provenance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from dream_s_edge.draft.spec import DraftSpec
from runtime.errors import UserInputError
from runtime.tree import TreeSpec
from search.json_record import JsonRecord
from search.latency import LatencyModel
from search.supernet import SubnetChoice

FORMAT_VERSION = 1


class SearchError(UserInputError):
    """The search has nothing to choose from (empty grid, or every candidate breaks a constraint)."""


@dataclass(frozen=True)
class SearchConstraints:
    """Limits a candidate must respect (None = no limit).

    Attributes:
        max_params: trainable draft parameters (the draft's own memory; the embedding and LM head
            are the target's).
        max_step_ms: predicted latency of one speculative step (draft tree + verify).
    """

    max_params: int | None = None
    max_step_ms: float | None = None


@dataclass(frozen=True)
class Candidate:
    """One scored (sub-network, tree) pair."""

    choice: SubnetChoice
    tree: TreeSpec
    tau: float
    step_ms: float
    speedup: float
    params: int


@dataclass(frozen=True)
class SearchResult(JsonRecord):
    """The drafting config the search chose; export and the runtime read it.

    Attributes:
        choice: the sub-network of the supernet.
        spec: its DraftSpec (what `extract_subnet` materialises).
        tree: the tree setting to decode with.
        predicted_speedup: τ̂ · t_AR / step_ms.
        tau: τ̂, tokens per target pass.
        step_ms: predicted step latency (draft tree + verify).
        ar_ms: predicted autoregressive step (verify of one token).
        params: trainable draft parameters.
        provenance: where the numbers came from (table key, supernet, τ source, past, constraints).
    """

    choice: SubnetChoice
    spec: DraftSpec
    tree: TreeSpec
    predicted_speedup: float
    tau: float
    step_ms: float
    ar_ms: float
    params: int
    provenance: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "choice": self.choice.to_dict(), "spec": self.spec.to_dict(),
                "tree": tree_to_dict(self.tree), "predicted_speedup": self.predicted_speedup, "tau": self.tau,
                "step_ms": self.step_ms, "ar_ms": self.ar_ms, "params": self.params, "provenance": self.provenance}

    @classmethod
    def from_dict(cls, data: dict) -> SearchResult:
        if data.get("format_version") != FORMAT_VERSION:
            raise SearchError("Unsupported search result format.",
                              f"format_version={data.get('format_version')}, expected {FORMAT_VERSION}")
        return cls(SubnetChoice.from_dict(data["choice"]), DraftSpec.from_dict(data["spec"]),
                   tree_from_dict(data["tree"]), data["predicted_speedup"], data["tau"], data["step_ms"],
                   data["ar_ms"], data["params"], data.get("provenance", {}))


def tree_to_dict(tree: TreeSpec) -> dict:
    return tree.to_dict()


def tree_from_dict(data: dict) -> TreeSpec:
    return TreeSpec.from_dict(data)


def tree_grid(top_ks, depths, node_budgets) -> list[TreeSpec]:
    """Every dynamic tree of the grid whose node budget its depth and top-k can fill."""
    return [TreeSpec.dynamic(top_k=k, depth=d, node_budget=n)
            for k in top_ks for d in depths for n in node_budgets if 2 <= n <= 1 + k * d]


def predicted_step(model: LatencyModel, spec: DraftSpec, tree: TreeSpec, tau: float, past: int,
                   visual_tokens: int = 0) -> tuple[float, float, float]:
    """(speedup, step_ms, ar_ms) of one (spec, tree) with acceptance τ̂ at `past` committed tokens."""
    ar = model.verify_ms(1, past)
    step = model.step_ms(spec, tree, past, accepted=max(1, round(tau)), visual_tokens=visual_tokens)["total"]
    return tau * ar / step, step, ar


def search_drafts(model: LatencyModel, specs: dict[SubnetChoice, DraftSpec], trees: list[TreeSpec],
                  tau_of: Callable[[SubnetChoice, TreeSpec], float], params_of: Callable[[DraftSpec], int],
                  past: int = 256, visual_tokens: int = 0, constraints: SearchConstraints = SearchConstraints(),
                  provenance: dict | None = None) -> tuple[SearchResult, list[Candidate]]:
    """Exhaustive search: scores every (sub-network, tree) pair, returns the best that fits.

    Args:
        model: latency model of the device's table entry.
        specs: the candidate sub-networks and their DraftSpecs (`Supernet.subnet_spec`).
        trees: the candidate tree settings.
        tau_of: τ̂ of a pair (e.g. from `estimate_tau` on stored target records).
        params_of: trainable parameters of a spec (`search.supernet.param_count`).
        past: committed tokens the steps are costed at.
        visual_tokens: image tokens in a typical prompt (the draft keeps `visual_keep_ratio` of them).
        constraints: limits a candidate must respect.
        provenance: recorded in the result as is (plus the costing settings).

    Returns:
        (the best SearchResult, every candidate that fits the constraints).

    Raises:
        SearchError: no candidate fits.
    """
    candidates, ar = [], 0.0
    for choice, spec in specs.items():
        params = params_of(spec)
        if constraints.max_params is not None and params > constraints.max_params:
            continue
        for tree in trees:
            tau = tau_of(choice, tree)
            speedup, step, ar = predicted_step(model, spec, tree, tau, past, visual_tokens)
            if constraints.max_step_ms is not None and step > constraints.max_step_ms:
                continue
            candidates.append(Candidate(choice, tree, tau, step, speedup, params))
    if not candidates:
        raise SearchError("No sub-network and tree fit the search constraints.",
                          f"{len(specs)} sub-networks x {len(trees)} trees, constraints {constraints}",
                          "relax --max-params / --max-step-ms or widen the grid")
    best = max(candidates, key=lambda c: (c.speedup, -c.params))
    record = {**(provenance or {}), "past": past, "visual_tokens": visual_tokens,
              "constraints": dataclasses.asdict(constraints), "candidates": len(candidates),
              "table_key": model.entry.get("key")}
    result = SearchResult(best.choice, specs[best.choice], best.tree, best.speedup, best.tau, best.step_ms, ar,
                          best.params, record)
    return result, candidates


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both τ̂ (higher) and step latency (lower), by step latency."""
    front, best_tau = [], float("-inf")
    for c in sorted(candidates, key=lambda c: (c.step_ms, -c.tau)):
        if c.tau > best_tau:
            front.append(c)
            best_tau = c.tau
    return front


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties)."""
    import numpy as np

    def ranks(x):
        x = np.asarray(x, float)
        order = np.argsort(x, kind="stable")
        r = np.empty(x.size)
        r[order] = np.arange(x.size)
        for value in np.unique(x):  # ties share their mean rank
            r[x == value] = r[x == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def plot_pareto(candidates: list[Candidate], chosen: SearchResult, path) -> str:
    """τ̂ against predicted step latency: every candidate, the Pareto front, the choice (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto_front(candidates)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.scatter([c.step_ms for c in candidates], [c.tau for c in candidates], s=8, alpha=0.4, label="candidates")
    ax.plot([c.step_ms for c in front], [c.tau for c in front], marker="o", color="C1", label="Pareto front")
    ax.scatter([chosen.step_ms], [chosen.tau], marker="*", s=160, color="C3",
               label=f"chosen ({chosen.predicted_speedup:.2f}x)")
    ax.set(xlabel="predicted step latency, ms (draft tree + verify)", ylabel="τ̂ (tokens per target pass)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
