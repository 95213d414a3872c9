"""`dream-s-edge bench --ablate NAME=DRAFT ...`: the same bench for several drafts, in one table.

Data flow: the shared `BenchConfig` (backend, prompts, runner and tree settings) -> per entry,
`run_bench` with only the draft swapped (torch: a draft folder, 'untrained' or 'oracle'; ort-*/trt: an
exported artifact folder, which carries its draft) -> `OUT-runs/NAME.json` (+ .png), each run's own
full report -> `OUT.json` (one row per draft and every report), `OUT.png` (τ, tokens/s and speedup per
draft) and, with `table`, a markdown table that lists the commands that produced it, its plot beside.

Every row's τ, tokens/s and speedup come from one run in which autoregressive and speculative
decoding ran side by side on the same prompts. On torch, the target is loaded with the same attention
for every draft (eager when any draft prunes visual tokens), so the autoregressive baseline is the
same runner in every row.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dream_s_edge.bench.backends import draft_attention
from dream_s_edge.bench.run import BenchConfig, run_bench
from runtime.errors import UserInputError

logger = logging.getLogger(__name__)

FORMAT = "dream-s-edge-ablation"
FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # names become file names of the per-draft reports
_BUILTIN_DRAFTS = ("untrained", "oracle")
# BenchConfig field -> `dream-s-edge bench` flag (hf is the --no-hf switch; warmup has no flag).
_FLAGS = {"backend": "--backend", "prompts": "--prompts", "json_out": "--json", "model": "--model",
          "draft": "--draft", "artifacts": "--artifacts", "precision": "--precision",
          "max_new_tokens": "--max-new-tokens", "max_context": "--max-context", "tree_kind": "--tree",
          "top_k": "--top-k", "depth": "--depth", "node_budget": "--node-budget", "min_prob": "--min-prob",
          "limit": "--limit",
          "threads": "--threads", "attention": "--attention"}


@dataclass(frozen=True)
class AblationConfig:
    """One `dream-s-edge bench --ablate` run."""

    bench: BenchConfig  # shared settings; json_out is the combined report, draft/artifacts are set per entry
    entries: tuple[tuple[str, str], ...]  # (name, draft folder) on torch, (name, artifact folder) on ort-*/trt
    table: str | None = None  # markdown table to write (its plot goes beside it, .png)


def parse_entries(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """`NAME=DRAFT` strings -> ((name, draft), ...).

    Raises:
        UserInputError: an item without '=', a name that cannot be a file name, or a repeated name.
    """
    entries, seen = [], set()
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise UserInputError(f"--ablate takes NAME=DRAFT_FOLDER, not {item!r}.",
                                 hint="e.g. --ablate cross=runs/cross/draft concat=runs/concat/draft")
        if not _NAME.match(name):
            raise UserInputError(f"Ablation name {name!r} is not usable as a file name.",
                                 hint="use letters, digits and . _ + - (starting with a letter or digit)")
        if name in seen:
            raise UserInputError(f"Ablation name {name!r} appears twice.", hint="give every draft its own name")
        seen.add(name)
        entries.append((name, value))
    if not entries:
        raise UserInputError("--ablate needs at least one NAME=DRAFT_FOLDER.")
    return tuple(entries)


def _check_entries(config: AblationConfig) -> None:
    """Refuses missing folders (named) and a --draft / --artifacts that --ablate would override."""
    torch_backend = config.bench.backend == "torch"
    if torch_backend and config.bench.draft is not None:
        raise UserInputError("--ablate names the drafts itself; --draft cannot be given with it.",
                             hint="drop --draft, or add it as one more NAME=DRAFT_FOLDER")
    if not torch_backend and config.bench.artifacts is not None:
        raise UserInputError(f"With --backend {config.bench.backend}, --ablate names exported folders; "
                             "--artifacts cannot be given with it.", hint="pass NAME=ARTIFACT_FOLDER per draft")
    needed = "config.json" if torch_backend else "manifest.json"
    for name, value in config.entries:
        if torch_backend and value in _BUILTIN_DRAFTS:
            continue
        if not (Path(value) / needed).is_file():
            what = "a draft folder (save_draft / dream-s-edge train)" if torch_backend else "an exported folder"
            raise UserInputError(f"Ablation {name}: {value} is not {what}.", note=f"no {needed} in it",
                                 hint="pass NAME=FOLDER with a folder that exists")


def _shared_attention(config: AblationConfig) -> str | None:
    """Torch: one attention for every row, eager when any draft needs the target's attention scores."""
    if config.bench.backend != "torch":
        return config.bench.attention
    if config.bench.attention is not None:
        return config.bench.attention
    needs = {draft_attention(value) for _, value in config.entries}
    return "eager" if "eager" in needs else "sdpa"


def runs_dir(json_out: str | Path) -> Path:
    """Where the per-draft reports go: `OUT-runs/` beside OUT.json."""
    out = Path(json_out)
    return out.with_name(out.stem + "-runs")


def entry_config(config: AblationConfig, name: str, value: str) -> BenchConfig:
    """The bench config of one row: the shared settings with this draft (or artifact folder) swapped in."""
    swap = {"draft": value} if config.bench.backend == "torch" else {"artifacts": value}
    return replace(config.bench, **swap, attention=_shared_attention(config),
                   json_out=str(runs_dir(config.bench.json_out) / f"{name}.json"))


def run_ablation(config: AblationConfig) -> dict:
    """Runs the same bench for every entry; writes and returns the combined report.

    Raises:
        UserInputError: a bad entry (see `parse_entries`, `_check_entries`) or a bad bench setting.
    """
    _check_entries(config)
    rows, reports = [], {}
    for name, value in config.entries:
        logger.info("ablation %s: %s", name, value)
        bench = entry_config(config, name, value)
        report = run_bench(bench)
        reports[name] = report
        rows.append(_row(name, value, bench, report))
    first = reports[config.entries[0][0]]
    combined = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "backend": config.bench.backend, "device": first["device"], "host": first["host"],
        "prompts_file": config.bench.prompts, "prompts": first["prompts"],
        "max_new_tokens": config.bench.max_new_tokens,
        "command": ablation_command(config), "table": config.table,
        "rows": rows, "reports": reports,
    }
    out = Path(config.bench.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(combined, indent=2) + "\n")
    plot_ablation(combined, out.with_suffix(".png"))
    if config.table:
        write_table(combined, config.table)
    return combined


def _row(name: str, value: str, bench: BenchConfig, report: dict) -> dict:
    spec = (report.get("draft") or {}).get("spec") or {}
    return {
        "name": name, "draft": value,
        "interaction": spec.get("interaction"), "feature_layers": spec.get("feature_layers"),
        "visual_keep_ratio": spec.get("visual_keep_ratio"), "draft_layers": spec.get("num_layers"),
        "tau": report["tau"]["mean"], "tau_histogram": report["tau"]["histogram"],
        "early_target": early_target(value),
        "tokens_per_s": report["tokens_per_s"], "speedup": report["speedup"],
        "decode_speedup": report.get("decode_speedup"),
        "identical_prompts": report["identical_prompts"], "prompts": report["prompts"],
        "greedy_identical": report["greedy_identical"],
        "report": bench.json_out, "command": shlex.join(bench_command(bench)),
    }


def early_target(folder: str) -> str | None:
    """What a trained draft's early block was distilled towards, from its config.json: "entropy layer"
    (DREAM's entropy-selected layer), "last layer", or None (no record: untrained, oracle, an export)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        train = json.loads(path.read_text()).get("distillation", {}).get("train_config") or {}
    except json.JSONDecodeError:
        return None
    weight = train.get("intermed_weight")  # every trainer record holds it (TrainConfig.to_dict)
    if weight is None:
        return None
    if not weight:
        return "none"
    return {"entropy": "entropy layer", "last": "last layer"}.get(train.get("intermed_source", "entropy"))


def bench_command(config: BenchConfig) -> list[str]:
    """The `dream-s-edge bench` command line that runs `config` (flags left at their defaults omitted)."""
    defaults = BenchConfig(prompts="", json_out="")
    argv = ["dream-s-edge", "bench"]
    for name, flag in _FLAGS.items():
        value = getattr(config, name)
        if name in ("backend", "prompts", "json_out") or value != getattr(defaults, name):
            argv += [flag, str(value)]
    if not config.hf:
        argv.append("--no-hf")
    if config.warmup != defaults.warmup:
        logger.warning("warmup=%d has no bench flag; the listed commands use %d", config.warmup, defaults.warmup)
    return argv


def ablation_command(config: AblationConfig) -> str:
    """The `dream-s-edge bench --ablate ...` command line of the whole run."""
    argv = bench_command(config.bench)
    argv[2:2] = ["--ablate", *(f"{name}={value}" for name, value in config.entries)]
    if config.table:
        argv += ["--table", str(config.table)]
    return shlex.join(argv)


def _layers(row: dict) -> str:
    layers = row["feature_layers"]
    return ", ".join(str(i) for i in layers) if layers else "-"


def _fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def table_lines(combined: dict, plot_name: str | None = None) -> list[str]:
    """The markdown table of a combined report, with how it was measured and the commands behind it."""
    lines = [
        "# Draft ablations", "",
        f"Measured by `dream-s-edge bench --ablate` on the {combined['backend']} backend ({combined['device']},"
        f" host {combined['host']}): {combined['prompts']} prompts from `{combined['prompts_file']}`, greedy, at most"
        f" {combined['max_new_tokens']} new tokens. Each row is one run in which autoregressive and speculative"
        " decoding ran side by side on the same prompts with the same target runner; the speedup is the ratio"
        " of their tokens/s (prefill included), the decode speedup the same without each prompt's prefill and"
        " first token, \"early target\" what the draft's early block was distilled towards, and \"identical\""
        " counts prompts whose greedy outputs agree token for token.", "",
        "| name | draft | interaction | early target | feature layers | visual keep | τ mean | AR tokens/s "
        "| speculative tokens/s | speedup | decode speedup | identical |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in combined["rows"]:
        rate = row["tokens_per_s"]
        lines.append(
            f"| {row['name']} | `{row['draft']}` | {row['interaction'] or '-'} | {row.get('early_target') or '-'} "
            f"| {_layers(row)} | {_fmt(row['visual_keep_ratio'], 'g')} | {row['tau']:.2f} "
            f"| {rate['autoregressive']:.1f} | {rate['speculative']:.1f} | {row['speedup']:.2f}x "
            f"| {_fmt(row.get('decode_speedup'), '.2f')}x | {row['identical_prompts']}/{row['prompts']} |")
    if plot_name:
        lines += ["", f"![τ, tokens/s and speedup per draft]({plot_name})"]
    lines += ["", "## Commands", "", "The whole table:", "", f"    {combined['command']}", "",
              "Each row on its own (the same settings; writes that row's report):", ""]
    lines += [f"    {row['command']}" for row in combined["rows"]]
    return lines + [""]


def write_table(combined: dict, path) -> Path:
    """Writes the markdown table and its plot beside it (same stem, .png)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot = plot_ablation(combined, path.with_suffix(".png"))
    path.write_text("\n".join(table_lines(combined, plot.name)))
    return path


def plot_ablation(combined: dict, path) -> Path:
    """Bars per draft: τ, and tokens/s of both methods labelled with the speedup (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = combined["rows"]
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(rows) + 4), 3.8))
    ax.bar(x, [r["tau"] for r in rows], color="C2")
    ax.set(xticks=x, xticklabels=names, ylabel="τ (tokens per target pass)", title="Acceptance length")
    width = 0.38
    ar = [r["tokens_per_s"]["autoregressive"] for r in rows]
    spec = [r["tokens_per_s"]["speculative"] for r in rows]
    bx.bar(x - width / 2, ar, width, label="autoregressive", color="C7")
    bars = bx.bar(x + width / 2, spec, width, label="speculative", color="C0")
    for bar, row in zip(bars, rows, strict=True):
        bx.annotate(f"{row['speedup']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    bx.set(xticks=x, xticklabels=names, ylabel="tokens/s", title=f"{combined['backend']}: speedup per draft")
    bx.legend(fontsize=8)
    for axis in (ax, bx):
        axis.tick_params(axis="x", labelrotation=20 if len(rows) > 4 else 0)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
