"""`search --confirm K`: the search's top candidates decoded for real, against autoregressive decoding.

Place in the data flow::

    candidates (search/search.py, ranked by predicted speedup on an ort-cpu table) + a hand-set
    baseline (the largest sub-network with the DREAM paper's tree, dynamic k 4, depth 6, N 32)
      --plan_runs (the top K the folder's target can feed: its feature layers and node budget)-->
      --build_subnet (real weights) --export_trained_variant (draft graphs over DIR's target)-->
      --OrtDraftRunner per candidate, one OrtTargetRunner--> greedy decoding of FILE.jsonl,
        autoregressive and every candidate side by side in one process --> OUT/confirm.json

Decoding reuses `dream_s_edge.bench.tuned` (one decode, one per-prompt row, one per-setting
summary), so tokens/s, τ and the identical-output check mean what they mean in `tune --measure`
and `bench`: each setting runs once on the first prompt untimed (warm-up), then per prompt the
settings run in an order that rotates from prompt to prompt; tokens/s is new tokens over the wall
time of the generate calls (prefill included); greedy decoding makes every setting's tokens the
target's own, and the report checks it.

Report (`format` "dream-s-edge-search-confirm", `format_version` 1)::

    {"format", "format_version", "backend": "ort-cpu", "device", "artifacts", "table_key", "prompts",
     "max_new_tokens", "autoregressive": {"tokens_per_s", "new_tokens", "wall_s"},
     "candidates": [{"name": "rank1" | ... | "baseline", "rank": predicted rank or null, "choice",
                     "tree", "params", "variant", "same_as",
                     "predicted": {"tau", "step_ms", "ar_ms", "speedup"},
                     "measured": {"tau", "tokens_per_s", "speedup", "accept_counts", "new_tokens", "wall_s"}}],
     "skipped": [{"name", "rank", "choice", "tree", "reason"}],
     "greedy_identical": bool, "mismatched_prompts": [index, ...],
     "speedup_rank_correlation": Spearman of predicted vs measured speedup (null under 3 candidates),
     "per_prompt": [{"image", "question", "identical", "texts", "settings"}]}
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

FORMAT = "dream-s-edge-search-confirm"
FORMAT_VERSION = 1
BACKEND = "ort-cpu"  # the only backend the confirmation decodes on
NO_BASELINE = "none"


@dataclass(frozen=True)
class ConfirmConfig:
    """What `search --confirm` decodes (the search itself is the SearchConfig around it)."""

    top: int  # K: distinct (sub-network, tree) candidates by predicted speedup
    prompts: Path  # JSON lines of {"image": path or null, "question": str}
    artifacts: Path  # `dream-s-edge export` folder: its target is reused, the drafts go to variants/
    baseline: str = "eagle2"  # tree preset of the largest sub-network (DREAM paper: k 4, depth 6, N 32); "none"
    max_new_tokens: int = 64
    threads: int | None = None  # onnxruntime intra-op threads (None: its default)
    warmup: int = 1  # untimed runs of the first prompt per setting
    parity: bool = True  # check every exported draft graph against PyTorch


@dataclass(frozen=True)
class Planned:
    """One setting to decode: a candidate (or the baseline) and what the search predicted for it."""

    name: str  # "rank1", ..., or "baseline"
    rank: int | None  # 1-based rank by predicted speedup among the search's candidates (None: not one)
    candidate: object  # search.search.Candidate
    same_as: str | None = None  # an earlier setting with the same sub-network and tree (decoded once)


@dataclass(frozen=True)
class ConfirmReport:
    """confirm.json (see the module docstring); `data` is the JSON body."""

    data: dict = field(default_factory=dict)

    @property
    def greedy_identical(self) -> bool:
        return bool(self.data["greedy_identical"])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.data, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ConfirmReport:
        from search.search import SearchError

        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise SearchError("Unsupported search confirmation format.",
                              f"format={data.get('format')!r}, format_version={data.get('format_version')}")
        return cls(data)


# ---- before the search: refuse what cannot be confirmed -----------------------------------------
def open_artifacts(config: ConfirmConfig, entry: dict):
    """The artifact folder's Manifest, after checking the table entry is one this step can confirm.

    Raises:
        UserInputError: the ranking table is not an onnxruntime CPU table, or no prompts file.
        ManifestError: the folder is not a valid export.
    """
    from runtime.errors import UserInputError
    from runtime.manifest import Manifest

    backend = entry["key"].get("backend")
    if backend != BACKEND:
        raise UserInputError(f"search --confirm decodes on onnxruntime CPU, but the ranking table entry is {backend}.",
                             note=f"table key {entry['key']}",
                             hint="pass an ort-cpu table (dream-s-edge profile --backend ort-cpu) as --table "
                                  "(the other device's as --compare-table), or drop --confirm")
    if config.top < 1:
        raise UserInputError("search --confirm needs at least one candidate.", note=f"K={config.top}")
    if not Path(config.prompts).is_file():
        raise UserInputError(f"No prompts file {config.prompts} for search --confirm.",
                             hint='pass --prompts FILE.jsonl, one {"image": path or null, "question": str} per line')
    return Manifest.load(config.artifacts)


def baseline_tree(config: ConfirmConfig | None):
    """The baseline's tree (a TREE_PRESETS name), or None without a baseline.

    Raises:
        SpecMismatchError: an unknown preset name.
    """
    from runtime.tree import TreeSpec

    if config is None or config.baseline == NO_BASELINE:
        return None
    return TreeSpec.from_name(config.baseline)


# ---- which candidates ----------------------------------------------------------------------------
def unfit_reason(manifest, spec, tree) -> str | None:
    """Why the folder's target cannot drive this (spec, tree), or None when it can.

    The exported decoder emits the features of its export's layers and returns logits for at most
    its node budget, both fixed at export; only the draft is exported here.
    """
    layers = tuple(int(i) for i in manifest["feature_layers"])
    if tuple(spec.feature_layers) != layers:
        return (f"reads target layer(s) {list(spec.feature_layers)}, the folder's target emits {list(layers)} "
                "(export the target with that draft's layers)")
    budget = int(manifest["limits"]["node_budget"])
    if tree.node_budget > budget:
        return f"tree node budget {tree.node_budget} > the folder's target node budget {budget} (re-export with --node-budget)"
    if tree.top_k > spec.draft_vocab:
        return f"tree top_k {tree.top_k} > draft vocabulary {spec.draft_vocab}"
    return None


def plan_runs(ranked: list, baseline, specs: dict, manifest, top: int) -> tuple[list[Planned], list[dict]]:
    """The top `top` candidates the folder can run, then the baseline; and the ones passed over.

    Args:
        ranked: the search's candidates, best predicted speedup first.
        baseline: the baseline Candidate, or None.
        specs: SubnetChoice -> DraftSpec.
        manifest: the artifact folder's manifest.
        top: K.

    Returns:
        (settings to decode, skipped rows {name, rank, choice, tree, reason}).

    Raises:
        UserInputError: none of the candidates fits the folder.
    """
    from runtime.errors import UserInputError
    from search.search import tree_to_dict

    planned, skipped = [], []
    for rank, cand in enumerate(ranked, start=1):
        if len(planned) == top:
            break
        reason = unfit_reason(manifest, specs[cand.choice], cand.tree)
        if reason is None:
            planned.append(Planned(f"rank{rank}", rank, cand))
        else:
            skipped.append({"name": f"rank{rank}", "rank": rank, "choice": cand.choice.to_dict(),
                            "tree": tree_to_dict(cand.tree), "reason": reason})
    if not planned:
        raise UserInputError(f"None of the top candidates can run on the target exported in {manifest.folder}.",
                             note=skipped[0]["reason"] if skipped else "no candidates",
                             hint="re-export the target with the search's feature layers and node budget")
    if baseline is not None:
        planned, skipped = _add_baseline(planned, skipped, ranked, baseline, specs, manifest)
    return planned, skipped


def _add_baseline(planned, skipped, ranked, baseline, specs, manifest):
    from search.search import tree_to_dict

    rank = next((i for i, c in enumerate(ranked, start=1) if (c.choice, c.tree) == (baseline.choice, baseline.tree)),
                None)
    reason = unfit_reason(manifest, specs[baseline.choice], baseline.tree)
    if reason is not None:
        logger.warning("baseline skipped: %s", reason)
        return planned, [*skipped, {"name": "baseline", "rank": rank, "choice": baseline.choice.to_dict(),
                                    "tree": tree_to_dict(baseline.tree), "reason": reason}]
    same = next((p.name for p in planned if (p.candidate.choice, p.candidate.tree) == (baseline.choice, baseline.tree)),
                None)
    return [*planned, Planned("baseline", rank, baseline, same)], skipped


# ---- the run -------------------------------------------------------------------------------------
def confirm_candidates(config: ConfirmConfig, manifest, net, specs: dict, ranked: list, baseline,
                       table_key: dict, out: Path) -> ConfirmReport:
    """Exports and decodes the planned candidates; writes and returns OUT/confirm.json.

    Args:
        config: what to decode.
        manifest: the artifact folder's manifest (`open_artifacts`).
        net: the supernet the sub-networks are extracted from.
        specs: SubnetChoice -> DraftSpec.
        ranked: the search's candidates, best predicted speedup first.
        baseline: the baseline Candidate (predicted on the same table), or None.
        table_key: the ranking table entry's key.
        out: the search's output folder.
    """
    from runtime.ort_target import OrtTargetRunner

    planned, skipped = plan_runs(ranked, baseline, specs, manifest, config.top)
    variants = _export(manifest, net, planned, config.parity)
    target = OrtTargetRunner(manifest, "cpu", config.threads)
    session = _session(manifest, target)
    distinct = [p for p in planned if p.same_as is None]
    drafts = {p.name: _draft_runner(variants[p.name], target, p.candidate.tree, config.threads) for p in distinct}
    rows = _measure(session, drafts, {p.name: p.candidate.tree for p in distinct}, config)
    report = ConfirmReport(_report(config, manifest, planned, skipped, variants, rows, table_key, session))
    report.save(Path(out) / "confirm.json")
    return report


def _export(manifest, net, planned: list[Planned], parity: bool) -> dict:
    """Setting name -> Manifest of its exported draft over the folder's target."""
    from tqdm.auto import tqdm

    from search.candidate_export import export_trained_variant
    from search.supernet import build_subnet

    variants = {}
    for p in tqdm([p for p in planned if p.same_as is None], desc="export candidates", unit="draft"):
        variants[p.name] = export_trained_variant(manifest, build_subnet(net, p.candidate.choice), p.candidate.tree,
                                                  parity)
    for p in planned:
        if p.same_as is not None:
            variants[p.name] = variants[p.same_as]
    return variants


@dataclass
class _Session:
    """What `dream_s_edge.bench.tuned`'s decode helpers read off a backend: runners, EOS ids, prompts."""

    target: object
    draft: object
    eos: tuple[int, ...]
    prompts: object  # runtime.preprocess.PromptBuilder


def _session(manifest, target) -> _Session:
    from runtime.preprocess import PromptBuilder

    return _Session(target, None, tuple(manifest["target"]["eos_token_ids"]),
                    PromptBuilder(manifest.folder, manifest["processor"]))


def _draft_runner(variant, target, tree, threads):
    """An OrtDraftRunner of one exported candidate, checked against its tree's buffers."""
    from runtime.decode import check_capacity
    from runtime.ort_draft import OrtDraftRunner

    draft = OrtDraftRunner(variant, target.embeddings, "cpu", threads)
    check_capacity(target, draft, tree)
    return draft


def _measure(session: _Session, drafts: dict, trees: dict, config: ConfirmConfig) -> list[dict]:
    """Greedy decoding of every prompt by autoregressive and each candidate; one row per prompt."""
    from tqdm.auto import tqdm

    from dream_s_edge.bench.run import read_prompts
    from dream_s_edge.bench.tuned import decode_with_tree, prompt_row  # what `tune --measure` measures
    from runtime.images import load_image

    settings = {"autoregressive": None, **trees}
    runners = {"autoregressive": None, **drafts}
    items = read_prompts(config.prompts)
    prompts = [session.prompts.build(None if image is None else load_image(image), q) for image, q in items]

    def decode(name, prompt):
        return decode_with_tree(dataclasses.replace(session, draft=runners[name]), settings[name], prompt,
                       config.max_new_tokens)

    names = list(settings)
    for name in names:
        for _ in range(config.warmup):
            decode(name, prompts[0])
    rows = []
    for i, ((image, question), prompt) in enumerate(tqdm(list(zip(items, prompts, strict=True)), desc="confirm",
                                                         unit="prompt")):
        order = names[i % len(names):] + names[: i % len(names)]
        results = {name: decode(name, prompt) for name in order}
        rows.append(prompt_row(image, question, {name: results[name] for name in names}, session))
    return rows


def _report(config, manifest, planned, skipped, variants, rows, table_key, session) -> dict:
    from dream_s_edge.bench.tuned import setting_summary
    from search.search import rank_correlation, tree_to_dict

    ar = setting_summary(rows, "autoregressive", None, None, None)
    entries = []
    for p in planned:
        c = p.candidate
        m = setting_summary(rows, p.same_as or p.name, c.tree, p.same_as, ar["tokens_per_s"])
        entries.append({
            "name": p.name, "rank": p.rank, "choice": c.choice.to_dict(), "tree": tree_to_dict(c.tree),
            "params": c.params, "variant": variants[p.name].path("draft_step").parent.name,
            "same_as": p.same_as,
            "predicted": {"tau": c.tau, "step_ms": c.step_ms, "ar_ms": c.speedup * c.step_ms / c.tau,  # τ̂·t_AR/step
                          "speedup": c.speedup},
            "measured": {k: m[k] for k in ("tau", "tokens_per_s", "speedup", "accept_counts", "new_tokens", "wall_s")}})
    distinct = [e for e in entries if e["same_as"] is None]
    rho = (rank_correlation([e["predicted"]["speedup"] for e in distinct], [e["measured"]["speedup"] for e in distinct])
           if len(distinct) >= 3 else None)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "backend": BACKEND,
        "device": "onnxruntime cpu" + (f" ({config.threads} threads)" if config.threads else ""),
        "artifacts": str(manifest.folder), "table_key": table_key, "prompts": len(rows),
        "max_new_tokens": config.max_new_tokens,
        "autoregressive": {k: ar[k] for k in ("tokens_per_s", "new_tokens", "wall_s")},
        "candidates": entries, "skipped": skipped,
        "greedy_identical": all(r["identical"] for r in rows),
        "mismatched_prompts": [i for i, r in enumerate(rows) if not r["identical"]],
        "speedup_rank_correlation": None if rho is None or math.isnan(rho) else rho,
        "per_prompt": rows,
    }


def format_confirm(report: ConfirmReport) -> list[str]:
    """The report as a plain-text table: predicted against measured, per candidate."""
    from search.compare import choice_name, tree_name
    from search.search import tree_from_dict
    from search.supernet import SubnetChoice

    data = report.data
    lines = [f"{'setting':10s} {'sub-network':44s} {'tree (k/depth/N)':18s} {'τ̂':>5s} {'τ':>5s} "
             f"{'pred.':>7s} {'meas.':>7s} {'tokens/s':>9s}",
             f"{'autoregr.':10s} {'':44s} {'':18s} {'':5s} {1.0:5.2f} {'':7s} {1.0:6.2f}x "
             f"{data['autoregressive']['tokens_per_s']:9.2f}"]
    for e in data["candidates"]:
        p, m = e["predicted"], e["measured"]
        lines.append(f"{e['name']:10s} {choice_name(SubnetChoice.from_dict(e['choice'])):44s} "
                     f"{tree_name(tree_from_dict(e['tree'])):18s} {p['tau']:5.2f} {m['tau']:5.2f} "
                     f"{p['speedup']:6.2f}x {m['speedup']:6.2f}x {m['tokens_per_s']:9.2f}")
    for s in data["skipped"]:
        lines.append(f"{s['name']:10s} skipped: {s['reason']}")
    lines.append(f"greedy outputs identical to autoregressive: {data['greedy_identical']}")
    return lines
