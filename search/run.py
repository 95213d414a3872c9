"""`dream-s-edge search`: from a latency table and a trained supernet to a drafting config and its draft.

Data flow::

    --model target, calibration prompts --record_target (target runs once per prompt)--> records
    --supernet folder --load_supernet--> sub-networks of the grid --estimate_tau (draft only)--> τ̂
    --table entry --LatencyModel--> search_drafts --> OUT/search.json (SearchResult),
        OUT/candidates.json (every scored pair, the Pareto front marked), OUT/pareto.png (τ̂
        against step latency), OUT/draft/ (the chosen
        sub-network extracted as a standalone draft folder, what `dream-s-edge export` takes)
    --compare table entry (optional) --the same τ̂--> a second search --> OUT/compare.json,
        OUT/compare.png (search/compare.py: both choices, each costed on both tables)
    --confirm K (optional, ort-cpu table) --> the top K candidates and a baseline exported over
        an artifact folder's target and decoded for real --> OUT/confirm.json (search/confirm.py)

τ̂ is computed once, whatever the number of tables: acceptance depends on the draft, the tree and
the target's continuations, not on the device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from search.compare import TableSelection
from search.confirm import ConfirmConfig

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
    prompts: int = 8  # calibration prompts the τ̂ replay runs on (held-out scene QA, photos, open scenes in turn)
    max_new_tokens: int = 32  # tokens decoded per calibration prompt
    max_context: int = 1024
    seed: int = 0  # calibration prompt seed
    # The grid (SearchSpace fields); empty / None: the supernet's training space (`resolve_space`).
    num_layers: tuple[int, ...] = ()
    head_ratios: tuple[float, ...] = ()
    ffn_ratios: tuple[float, ...] = ()
    injection_layers: int | None = None  # candidate feature layers: the target's last N hidden states
    visual_keep_ratios: tuple[float, ...] = ()
    draft_vocab_sizes: tuple[int | None, ...] = ()
    top_ks: tuple[int, ...] = (4,)  # tree grid
    depths: tuple[int, ...] = (3, 4, 6)
    node_budgets: tuple[int, ...] = (8, 16, 32)
    past: int = 256  # committed tokens the steps are costed at
    max_params: int | None = None  # constraints
    max_step_ms: float | None = None
    interactions: tuple[str, ...] = field(default=())  # () = the training space's (every branch)
    compare: TableSelection | None = None  # a second device's table entry, searched with the same τ̂
    confirm: ConfirmConfig | None = None  # decode the top candidates for real (needs an ort-cpu --table)

    @property
    def selection(self) -> TableSelection:
        """The ranking table's entry (`table` and its key fields)."""
        return TableSelection(self.table, self.device, self.backend, self.precision)


@dataclass(frozen=True)
class SearchOutcome:
    """Everything one `dream-s-edge search` produced (also written under `SearchConfig.out`).

    Attributes:
        result: the choice on the ranking table (search.json).
        candidates: every scored pair on that table (candidates.json).
        compare: the side-by-side search of the compare table (compare.json), or None.
        confirm: the real runs of the top candidates (confirm.json), or None.
    """

    result: object  # search.search.SearchResult
    candidates: list
    compare: object | None = None  # search.compare.CompareReport
    confirm: object | None = None  # search.confirm.ConfirmReport


def run_search(config: SearchConfig):
    """Runs the whole search; returns the SearchResult (also written under `config.out`)."""
    return run_search_outcome(config).result


def run_search_outcome(config: SearchConfig) -> SearchOutcome:
    """The search, then the comparison and the confirmation runs its config asks for.

    Tables, the compare entry and the artifact folder are read first, so a bad flag fails before
    the minutes of τ̂ replay.
    """
    import torch

    from search.confirm import baseline_tree, open_artifacts
    from search.search import pareto_front, tree_grid

    entry = config.selection.entry()
    other = config.compare.entry() if config.compare is not None else None
    manifest = open_artifacts(config.confirm, entry) if config.confirm is not None else None
    adapter, net, space = load_net_and_space(config)
    specs = {c: net.subnet_spec(c) for c in space.choices()}
    trees = tree_grid(config.top_ks, config.depths, config.node_budgets)
    pairs = [(c, t) for c in specs for t in trees]
    base_tree = baseline_tree(config.confirm)
    extra = [(space.largest(), base_tree)] if base_tree is not None and base_tree not in trees else []
    records = _records(adapter, space, config, max(t.depth for _, t in pairs + extra))
    with torch.inference_mode():
        tau_of = _tau_table(adapter, net, pairs + extra, records, config)  # once for every table
    provenance = {"supernet": str(config.supernet), "model": config.model,
                  "tau": f"replay of {len(records)} held-out prompts (seed {config.seed}), "
                         f"{config.max_new_tokens} new tokens, greedy"}
    result, candidates = _search_table(entry, config.table, specs, trees, tau_of, config, provenance)
    _write(config.out, net, result, candidates, pareto_front(candidates), config.supernet)
    compare = confirm = None
    if other is not None:
        compare = _compare(config, entry, result, other, specs, trees, tau_of, provenance)
    if manifest is not None:
        confirm = _confirm(config, manifest, net, specs, candidates, space.largest(), base_tree, tau_of, entry)
    return SearchOutcome(result, candidates, compare, confirm)


def _search_table(entry: dict, table, specs, trees, tau_of: dict, config: SearchConfig, provenance: dict):
    """(SearchResult, candidates) of one table entry over the shared τ̂ table."""
    from search.latency import LatencyModel
    from search.search import SearchConstraints, search_drafts
    from search.supernet import param_count

    return search_drafts(
        LatencyModel(entry), specs, trees, lambda c, t: tau_of[(c, t)], param_count, config.past,
        constraints=SearchConstraints(config.max_params, config.max_step_ms),
        provenance={"table": str(table), **provenance})


def _compare(config: SearchConfig, entry: dict, result, other: dict, specs, trees, tau_of, provenance):
    """The compare table's search, both choices costed on both tables -> compare.json and compare.png."""
    from search.compare import compare_choices, plot_compare

    second, _ = _search_table(other, config.compare.path, specs, trees, tau_of, config, provenance)
    report = compare_choices([(config.selection, entry, result), (config.compare, other, second)], config.past,
                             provenance=provenance)
    report.save(Path(config.out) / "compare.json")
    plot_compare(report, Path(config.out) / "compare.png")
    return report


def _confirm(config: SearchConfig, manifest, net, specs, candidates, largest, base_tree, tau_of, entry):
    """Ranks the candidates, prices the baseline on the ranking table, decodes them -> confirm.json."""
    from search.confirm import confirm_candidates
    from search.latency import LatencyModel
    from search.search import Candidate, predicted_step
    from search.supernet import param_count

    ranked = sorted(candidates, key=lambda c: (c.speedup, -c.params), reverse=True)
    baseline = None
    if base_tree is not None:
        tau = tau_of[(largest, base_tree)]
        speedup, step, _ = predicted_step(LatencyModel(entry), specs[largest], base_tree, tau, config.past)
        baseline = Candidate(largest, base_tree, tau, step, speedup, param_count(specs[largest]))
    return confirm_candidates(config.confirm, manifest, net, specs, ranked, baseline, entry["key"], config.out)


def load_search_target(model: str, folder, keep_ratios: tuple[float, ...] = ()):
    """The target ('default' or a local HF folder), with eager attention when the grid has a visual
    keep ratio below 1 (`keep_ratios`, else the supernet's training space): the target then
    measures the visual-token scores the draft's compression needs."""
    from dream_s_edge.targets import load_target
    from search.supernet import SUPERNET_CONFIG
    from search.supernet_train import trained_space

    trained = trained_space(folder) if (Path(folder) / SUPERNET_CONFIG).is_file() else None
    keep = keep_ratios or (trained.visual_keep_ratios if trained else (1.0,))
    if model == "default":
        from dream_s_edge.embedded import ensure_default_target

        path = ensure_default_target()
    else:
        path = Path(model)
    return load_target(path, attn_implementation="eager" if min(keep) < 1.0 else "sdpa")


def resolve_space(net, folder, target_num_layers: int, injection_layers: int | None = None, **fields):
    """The grid to score: given fields, the rest from the supernet's training space.

    Args:
        net: the loaded supernet.
        folder: its folder; `train --supernet` records the space it trained over in supernet.json.
        target_num_layers: L of the target.
        injection_layers: candidate injection layers are the target's last N (None: the trained ones).
        **fields: SearchSpace fields; an empty tuple takes the trained value.

    Without a recorded space (a supernet saved outside `train --supernet`) the defaults are every
    branch and depth of the supernet, every head ratio keeping whole KV groups, FFN ratios 0.5 and
    1, the target's last 5 layers, all visual tokens and the full vocabulary.
    """
    from search.supernet import SearchSpace
    from search.supernet_train import trained_space

    spec = net.spec
    space = trained_space(folder) or SearchSpace.for_target(
        target_num_layers, 5, interactions=tuple(net.branches), num_layers=tuple(range(1, spec.num_layers + 1)),
        head_ratios=tuple(k / spec.num_kv_heads for k in range(1, spec.num_kv_heads + 1)))
    if injection_layers is not None:
        fields["feature_layers"] = SearchSpace.for_target(target_num_layers, injection_layers).feature_layers
    return dataclasses.replace(space, **{k: tuple(v) for k, v in fields.items() if v})


def _records(adapter, space, config: SearchConfig, depth: int):
    """Target continuations of the calibration prompts, with every candidate injection layer."""
    from dream_s_edge.distill.prompts import mixed_heldout_prompts

    prompts = mixed_heldout_prompts(config.prompts, config.seed)
    return record_prompts(adapter, space, prompts, config.max_new_tokens, config.max_context, depth)


def record_prompts(adapter, space, prompts, max_new_tokens: int, max_context: int, depth: int) -> list:
    """The target's greedy continuations of `prompts` for the τ̂ replay (the target runs once per prompt).

    Args:
        adapter: the target.
        space: the SearchSpace; every candidate injection layer is recorded, and the visual-token
            scores when a keep ratio below 1 is searched (eager attention only).
        prompts: PromptSpecs (`dream_s_edge.distill.prompts`).
        max_new_tokens: tokens the replay decodes per prompt.
        max_context: target runner context.
        depth: the deepest tree replayed.

    Returns:
        One `TargetRecord` per prompt.
    """
    from dream_s_edge.distill.prompts import materialize
    from dream_s_edge.generation import build_prompt
    from dream_s_edge.runners.target_torch import TorchTargetRunner
    from runtime.runner import RunnerLimits
    from search.tau_estimate import record_target

    layers = tuple(adapter.spec.num_layers if i == -1 else i for i in space.feature_layers)
    eager = adapter.language_model.config._attn_implementation == "eager"
    wants_scores = eager and min(space.visual_keep_ratios) < 1.0
    target = TorchTargetRunner(adapter, RunnerLimits(max_context, 1), feature_layers=layers,
                               visual_attention=wants_scores)
    records = []
    for spec in prompts:
        image, question = materialize(spec)
        prompt = build_prompt(adapter, image, question, max_context - max_new_tokens - depth - 2)
        records.append(record_target(target, prompt, layers, max_new_tokens + depth + 1))
    return records


def _tau_table(adapter, net, pairs: list, records, config: SearchConfig) -> dict:
    """τ̂ of every (choice, tree) pair by replay; one extracted draft per choice."""
    from dream_s_edge.runners.draft_factory import draft_runner
    from search.supernet import build_subnet
    from search.tau_estimate import estimate_tau

    trees_of: dict = {}
    for choice, tree in pairs:
        trees_of.setdefault(choice, []).append(tree)
    taus = {}
    for choice, trees in trees_of.items():
        model = build_subnet(net, choice)
        for tree in trees:
            runner = draft_runner(adapter, model, config.max_context, tree)
            est = estimate_tau(records, runner, model.spec.feature_layers, tree, config.max_new_tokens,
                               adapter.spec.eos_token_ids)
            taus[(choice, tree)] = est.tau
        logger.info("τ̂ of %s: %s", choice, [round(taus[(choice, t)], 2) for t in trees])
    return taus


def _write(out: Path, net, result, candidates, front, supernet_dir: Path) -> None:
    """search.json, candidates.json, the Pareto plot and the chosen draft (with the supernet's token
    counts, when it has them, so `export --search ... --draft-vocab N` can rank its tokens)."""
    import shutil

    from dream_s_edge.default_draft import TOKEN_COUNTS_FILE
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
    counts = Path(supernet_dir) / TOKEN_COUNTS_FILE
    if counts.is_file():
        shutil.copyfile(counts, out / "draft" / TOKEN_COUNTS_FILE)


def load_net_and_space(config):
    """(target adapter, supernet, search space) for a `search` or `tau-check` config: the space is the
    one recorded with the supernet, narrowed by the config's grid fields that are set."""
    from search.supernet import load_supernet

    adapter = load_search_target(config.model, config.supernet, config.visual_keep_ratios)
    net = load_supernet(config.supernet, adapter.text_embedding().weight, adapter.lm_head_weight()).eval()
    space = resolve_space(net, config.supernet, adapter.spec.num_layers, config.injection_layers,
                          interactions=config.interactions, num_layers=config.num_layers,
                          head_ratios=config.head_ratios, ffn_ratios=config.ffn_ratios,
                          visual_keep_ratios=config.visual_keep_ratios, draft_vocab_sizes=config.draft_vocab_sizes)
    return adapter, net, space
