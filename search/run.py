"""`dream-s-edge search`: from a latency table and a trained supernet to a drafting config and its draft.

Data flow::

    --model target, calibration prompts --record_target (target runs once per prompt)--> records
    --supernet folder --load_supernet--> sub-networks of the grid --estimate_tau (draft only)--> τ̂
    --table entry --LatencyModel--> search_drafts --> OUT/search.json (SearchResult),
        OUT/candidates.json (every scored pair, the Pareto front marked), OUT/pareto.png (τ̂
        against step latency), OUT/draft/ (the chosen
        sub-network extracted as a standalone draft folder, what `dream-s-edge export` takes)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    """What `run_search` needs; the CLI fills it from flags."""

    table: Path  # latency table (`dream-s-edge profile`)
    supernet: Path  # supernet folder (`search.supernet.save_supernet`)
    out: Path  # output folder
    model: str = "default"  # target: 'default' or a local HF folder
    device: str | None = None  # latency table entry key fields (None: the only entry)
    backend: str | None = None
    precision: str | None = None
    prompts: int = 8  # calibration prompts (held-out scenes) the τ̂ replay runs on
    max_new_tokens: int = 32  # tokens decoded per calibration prompt
    max_context: int = 1024
    seed: int = 0  # calibration prompt seed
    num_layers: tuple[int, ...] = (1, 2)  # the grid (SearchSpace fields)
    head_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    ffn_ratios: tuple[float, ...] = (0.5, 1.0)
    injection_layers: int = 5  # candidate feature layers: the target's last N hidden states
    visual_keep_ratios: tuple[float, ...] = (1.0,)
    draft_vocab_sizes: tuple[int | None, ...] = (None,)
    top_ks: tuple[int, ...] = (4,)  # tree grid
    depths: tuple[int, ...] = (3, 4, 6)
    node_budgets: tuple[int, ...] = (8, 16, 32)
    past: int = 256  # committed tokens the steps are costed at
    max_params: int | None = None  # constraints
    max_step_ms: float | None = None
    interactions: tuple[str, ...] = field(default=())  # () = every branch of the supernet


def run_search(config: SearchConfig):
    """Runs the whole search; returns the SearchResult (also written under `config.out`)."""
    import torch

    from dream_s_edge.generation import load_model
    from search.latency import LatencyModel
    from search.latency_table import load_table, select_entry
    from search.search import SearchConstraints, pareto_front, search_drafts, tree_grid
    from search.supernet import SearchSpace, load_supernet, param_count

    entry = select_entry(load_table(config.table), device=config.device, backend=config.backend,
                         precision=config.precision)
    adapter = load_model(config.model)
    net = load_supernet(config.supernet, adapter.text_embedding().weight, adapter.lm_head_weight()).eval()
    space = SearchSpace.for_target(
        adapter.spec.num_layers, config.injection_layers, interactions=config.interactions or tuple(net.branches),
        num_layers=config.num_layers, head_ratios=config.head_ratios, ffn_ratios=config.ffn_ratios,
        visual_keep_ratios=config.visual_keep_ratios, draft_vocab_sizes=config.draft_vocab_sizes)
    specs = {c: net.subnet_spec(c) for c in space.choices()}
    trees = tree_grid(config.top_ks, config.depths, config.node_budgets)
    records = _records(adapter, space, config, max(t.depth for t in trees))
    with torch.inference_mode():
        tau_of = _tau_table(adapter, net, specs, trees, records, config)
    provenance = {"table": str(config.table), "supernet": str(config.supernet), "model": config.model,
                  "tau": f"replay of {len(records)} held-out prompts (seed {config.seed}), "
                         f"{config.max_new_tokens} new tokens, greedy"}
    result, candidates = search_drafts(
        LatencyModel(entry), specs, trees, lambda c, t: tau_of[(c, t)], param_count, config.past,
        constraints=SearchConstraints(config.max_params, config.max_step_ms), provenance=provenance)
    _write(config.out, net, result, candidates, pareto_front(candidates))
    return result


def _records(adapter, space, config: SearchConfig, depth: int):
    """Target continuations of the calibration prompts, with every candidate injection layer."""
    from dream_s_edge.distill.prompts import heldout_prompts, materialize
    from dream_s_edge.generation import build_prompt
    from dream_s_edge.runners.target_torch import TorchTargetRunner
    from runtime.runner import RunnerLimits
    from search.tau_estimate import record_target

    layers = tuple(adapter.spec.num_layers if i == -1 else i for i in space.feature_layers)
    eager = adapter.language_model.config._attn_implementation == "eager"
    wants_scores = eager and min(space.visual_keep_ratios) < 1.0
    target = TorchTargetRunner(adapter, RunnerLimits(config.max_context, 1), feature_layers=layers,
                               visual_attention=wants_scores)
    records = []
    for spec in heldout_prompts(config.prompts, 0, config.seed)[: config.prompts]:
        image, question = materialize(spec)
        prompt = build_prompt(adapter, image, question, config.max_context - config.max_new_tokens - depth - 2)
        records.append(record_target(target, prompt, layers, config.max_new_tokens + depth + 1))
    return records


def _tau_table(adapter, net, specs, trees, records, config: SearchConfig) -> dict:
    """τ̂ of every (choice, tree) by replay; one extracted draft per choice."""
    from dream_s_edge.runners.draft_factory import draft_runner
    from search.supernet import build_subnet
    from search.tau_estimate import estimate_tau

    taus = {}
    for choice in specs:
        model = build_subnet(net, choice)
        for tree in trees:
            runner = draft_runner(adapter, model, config.max_context, tree)
            est = estimate_tau(records, runner, model.spec.feature_layers, tree, config.max_new_tokens,
                               adapter.spec.eos_token_ids)
            taus[(choice, tree)] = est.tau
        logger.info("τ̂ of %s: %s", choice, [round(taus[(choice, t)], 2) for t in trees])
    return taus


def _write(out: Path, net, result, candidates, front) -> None:
    from dream_s_edge.draft.checkpoint import save_draft
    from search.search import plot_pareto, tree_to_dict
    from search.supernet import build_subnet

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "search.json")
    on_front = {id(c) for c in front}
    rows = [{"choice": c.choice.to_dict(), "tree": tree_to_dict(c.tree), "tau": c.tau, "step_ms": c.step_ms,
             "speedup": c.speedup, "params": c.params, "pareto": id(c) in on_front} for c in candidates]
    (out / "candidates.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot_pareto(candidates, result, out / "pareto.png")
    draft = build_subnet(net, result.choice)
    save_draft(out / "draft", draft, draft.spec)

