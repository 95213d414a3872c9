"""`dream-s-edge tune --measure`: the tuner's choice against the default tree, measured on real prompts.

Data flow::

    TABLE.json + DIR --dream_s_edge.profiling.run_tune--> tuned tree, or None (decode autoregressively)
    DIR manifest (or --baseline PRESET) -----------------> the default tree
    FILE.jsonl --PromptBuilder--> prompts --greedy decoding, side by side on one runner pair-->
        tokens/s per setting, speedups over autoregressive, tuned / default --> OUT.json (and stdout)

Three settings decode every prompt in one process, on onnxruntime's CPU provider, through the same
target and draft runners (KV buffers allocated once): "autoregressive" (the reference every speedup
is taken against), "default" (the tree the folder was exported with, which `ask`, `bench` and
`camera` decode with; or a preset by name) and "tuned". A setting equal to another one (the tuner
fell back to autoregressive decoding, or chose the default tree) is measured once and reported
under both names (`same_as`). Each setting runs once on the first prompt untimed (warm-up); then,
per prompt, the settings run in an order that rotates from prompt to prompt, so none is always
first after a change of prompt. Tokens/s is total new tokens over total wall time of the generate
calls (prefill included), as in `dream-s-edge bench`. Greedy decoding makes every setting's text
the target's own, so the report checks that all settings produced the same tokens.

Report (`format` "dream-s-edge-tune-measure", `format_version` 1)::

    {"format", "format_version", "backend": "ort-cpu", "device", "host", "artifacts", "table",
     "table_key": {device, backend, ...}, "prompts": 2, "max_new_tokens": 64,
     "tuner": {"choice": "speculative" | "autoregressive", "tree": TREE | null, "alpha",
               "expected_speedup", "predicted_step_ms", "predicted_ar_ms", "message"},
     "settings": {"autoregressive" | "default" | "tuned":
                  {"tree": TREE | null, "same_as": name | null, "tokens_per_s", "new_tokens", "wall_s",
                   "tau", "accept_counts", "speedup"}},             speedup: tokens/s over autoregressive
     "tuned_vs_default": measured tuned tokens/s / default tokens/s, "tuned_at_least_default": bool,
     "greedy_identical": bool, "mismatched_prompts": [index, ...],
     "per_prompt": [{"image", "question", "identical", "texts": {setting: text},
                     "settings": {setting: Metrics.to_dict()}}]}
    TREE = {"kind", "top_k", "depth", "node_budget"}
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dream_s_edge.profiling import TuneConfig, run_tune, tune_entry
from runtime.accept import GREEDY
from runtime.decode import autoregressive_generate, check_capacity, speculative_generate
from runtime.errors import UserInputError
from runtime.images import load_image
from runtime.session import tree_from_manifest
from runtime.tree import TREE_PRESETS, TreeSpec

logger = logging.getLogger(__name__)

FORMAT = "dream-s-edge-tune-measure"
FORMAT_VERSION = 1
SETTINGS = ("autoregressive", "default", "tuned")


@dataclass(frozen=True)
class TuneMeasureConfig:
    """What `dream-s-edge tune --measure` decodes (the tuning itself is `tune`, a TuneConfig)."""

    tune: TuneConfig  # table, artifacts, measured acceptance, which table entry, past length
    prompts: Path  # JSON lines of {"image": path or null, "question": str}
    json_out: Path | None = None  # the full report (stdout gets it too, without per-prompt rows)
    baseline: str = "manifest"  # the default tree: "manifest" (the folder's own) or a preset of TREE_PRESETS
    max_new_tokens: int = 64
    threads: int | None = None  # onnxruntime intra-op threads (None: its default)
    warmup: int = 1  # untimed runs of the first prompt per setting
    limit: int | None = None  # only the first N prompts


def tree_dict(tree: TreeSpec | None) -> dict | None:
    """A tree setting for the report (None: autoregressive decoding)."""
    return None if tree is None else tree.to_dict()


def baseline_tree(manifest, name: str) -> TreeSpec:
    """The default tree: the folder's exported tree ("manifest") or a named preset.

    Raises:
        UserInputError: an unknown name, or a preset the folder's draft cannot run (its top-k is
            fixed at export, and its buffers hold the exported node budget, depth and scratch slots).
    """
    if name == "manifest":
        return tree_from_manifest(manifest["tree"])
    if name not in TREE_PRESETS:
        raise UserInputError(f"Unknown baseline tree {name!r}.", hint=f"use manifest or one of {sorted(TREE_PRESETS)}")
    tree = TREE_PRESETS[name]
    draft = manifest["draft"]
    if tree.top_k != int(draft["top_k"]):
        raise UserInputError(f"The {name} tree takes top_k {tree.top_k}; this folder's draft was exported with "
                             f"top_k {draft['top_k']}.", hint=f"re-export with the {name} tree, or --baseline manifest")
    return tree


def measure_tuned(config: TuneMeasureConfig) -> dict:
    """Tunes from the table, then decodes the prompts with each setting; writes and returns the report."""
    from dream_s_edge.bench.backends import make_backend
    from dream_s_edge.bench.run import BenchConfig, read_prompts
    from search.profile import cpu_name

    result, alpha = run_tune(config.tune)
    entry_key = tune_entry(config.tune)["key"]
    if entry_key.get("backend") != "ort-cpu":
        logger.warning("the table entry %s is not onnxruntime CPU, which the measurement runs on", entry_key)
    bench = BenchConfig(prompts=str(config.prompts), json_out="", backend="ort-cpu",  # json_out: no bench report
                        artifacts=str(config.tune.artifacts), max_new_tokens=config.max_new_tokens,
                        threads=config.threads or 0, hf=False)
    backend = make_backend(bench)
    trees = {"autoregressive": None, "default": baseline_tree(backend.manifest, config.baseline),
             "tuned": result.tree}
    for tree in (t for t in trees.values() if t is not None):
        check_capacity(backend.target, backend.draft, tree)  # a preset larger than the exported buffers
    same = _same_as(trees)
    items = read_prompts(config.prompts)[: config.limit]
    prompts = [backend.prompt(None if image is None else load_image(image), question) for image, question in items]
    runs = [name for name in SETTINGS if same[name] is None]
    for name in runs:
        for _ in range(config.warmup):
            decode_with_tree(backend, trees[name], prompts[0], config.max_new_tokens)
    rows = []
    for i, ((image, question), prompt) in enumerate(zip(items, prompts, strict=True)):
        order = runs[i % len(runs):] + runs[: i % len(runs)]
        results = {name: decode_with_tree(backend, trees[name], prompt, config.max_new_tokens) for name in order}
        rows.append(prompt_row(image, question, {name: results[same[name] or name] for name in SETTINGS}, backend))
    report = _report(config, backend, rows, trees, same, result, alpha, entry_key, cpu_name())
    if config.json_out is not None:
        out = Path(config.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _same_as(trees: dict[str, TreeSpec | None]) -> dict[str, str | None]:
    """Each setting -> the earlier setting with the same tree (measured once), or None."""
    same: dict[str, str | None] = {}
    for i, name in enumerate(SETTINGS):
        same[name] = next((other for other in SETTINGS[:i] if trees[other] == trees[name] and same[other] is None),
                          None)
    return same


def decode_with_tree(backend, tree: TreeSpec | None, prompt, max_new_tokens: int):
    """Greedy decoding of one prompt: speculative with `tree`, or autoregressive (tree None)."""
    if tree is None:
        return autoregressive_generate(backend.target, prompt, GREEDY, max_new_tokens, backend.eos,
                                       np.random.default_rng(0))
    return speculative_generate(backend.target, backend.draft, prompt, tree, GREEDY, max_new_tokens, backend.eos,
                                np.random.default_rng(0))


def prompt_row(image, question: str, results: dict, backend) -> dict:
    reference = results["autoregressive"].tokens
    identical = all(np.array_equal(r.tokens, reference) for r in results.values())
    return {"image": image, "question": question, "identical": bool(identical),
            "texts": {name: backend.prompts.decode(r.tokens) for name, r in results.items()},
            "settings": {name: r.metrics.to_dict() for name, r in results.items()}}


def setting_summary(rows: list[dict], name: str, tree, same, ar_rate: float | None) -> dict:
    metrics = [r["settings"][name] for r in rows]
    tokens, wall = sum(m["new_tokens"] for m in metrics), sum(m["wall_s"] for m in metrics)
    counts = np.zeros(max(len(m["accept_counts"]) for m in metrics), dtype=np.int64)
    for m in metrics:
        counts[: len(m["accept_counts"])] += m["accept_counts"]
    passes = int(counts.sum())
    rate = tokens / max(wall, 1e-9)
    return {"tree": tree_dict(tree), "same_as": same, "tokens_per_s": rate, "new_tokens": int(tokens),
            "wall_s": float(wall), "tau": float(((np.arange(counts.size) + 1) * counts).sum() / max(passes, 1)),
            "accept_counts": counts.tolist(), "speedup": rate / ar_rate if ar_rate else 1.0}


def _report(config, backend, rows, trees, same, result, alpha: float, entry_key: dict, host: str) -> dict:
    settings = {"autoregressive": setting_summary(rows, "autoregressive", None, None, None)}
    ar_rate = settings["autoregressive"]["tokens_per_s"]
    for name in ("default", "tuned"):
        settings[name] = setting_summary(rows, name, trees[name], same[name], ar_rate)
    ratio = settings["tuned"]["tokens_per_s"] / max(settings["default"]["tokens_per_s"], 1e-9)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "backend": "ort-cpu", "device": backend.device,
        "host": host, "artifacts": str(config.tune.artifacts), "table": str(config.tune.table),
        "table_key": entry_key, "prompts": len(rows), "max_new_tokens": config.max_new_tokens,
        "tuner": {"choice": "autoregressive" if result.tree is None else "speculative",
                  "tree": tree_dict(result.tree), "alpha": float(alpha), "expected_speedup": float(result.speedup),
                  "predicted_step_ms": float(result.step_ms), "predicted_ar_ms": float(result.ar_ms),
                  "message": result.message},
        "settings": settings,
        "tuned_vs_default": ratio, "tuned_at_least_default": bool(ratio >= 1.0),
        "greedy_identical": all(r["identical"] for r in rows),
        "mismatched_prompts": [i for i, r in enumerate(rows) if not r["identical"]],
        "per_prompt": rows,
    }


def summary_lines(report: dict) -> list[str]:
    """The report as a few plain-text lines (setting, tree, tokens/s, speedup)."""
    lines = [f"{'setting':15s} {'tree (k/depth/N, min_prob)':27s} {'tokens/s':>9s} {'speedup':>8s} {'tau':>5s}"]
    for name, s in report["settings"].items():
        t = s["tree"]
        tree = "autoregressive" if t is None else f"{t['kind']} {t['top_k']}/{t['depth']}/{t['node_budget']}"
        if t is not None and t.get("min_prob"):
            tree += f", p {t['min_prob']:g}"
        lines.append(f"{name:15s} {tree:27s} {s['tokens_per_s']:9.2f} {s['speedup']:7.2f}x {s['tau']:5.2f}")
    lines.append(f"tuned / default {report['tuned_vs_default']:.2f}x; greedy outputs identical: "
                 f"{report['greedy_identical']}")
    return lines
