"""Hardware awareness side by side: the same τ̂ table searched against two devices' latency tables.

Place in the data flow::

    τ̂(choice, tree) (search/run.py, computed once: acceptance does not depend on the device)
    --table A entry --search_drafts--> SearchResult A ─┐
    --table B entry --search_drafts--> SearchResult B ─┴ compare_choices --> CompareReport
        --> OUT/compare.json, OUT/compare.png (each choice's predicted speedup on every table)

Each table's choice is also costed on the other table (`predicted_step` with the choice's own τ̂),
so the report says what running one device's pick on the other device would give up. Report
(`format` "dream-s-edge-search-compare", `format_version` 1)::

    {"format", "format_version", "same_choice": bool, "provenance": {...},
     "tables": [{"label": "ort-cpu @ cpu: ...", "table": path, "table_key": {...},
                 "result": SearchResult.to_dict(),
                 "scores": {label: {"step_ms", "ar_ms", "speedup"}}}, ...]}

`scores` holds the choice costed on every compared table, its own included (equal to the result's).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from search.json_record import JsonRecord

logger = logging.getLogger(__name__)

FORMAT = "dream-s-edge-search-compare"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TableSelection:
    """One latency table entry: the file and the key fields that pick the entry (None: any)."""

    path: Path
    device: str | None = None
    backend: str | None = None
    precision: str | None = None

    def entry(self) -> dict:
        """The selected entry.

        Raises:
            LatencyTableError: no entry, or several, match the key fields.
        """
        from search.latency_table import load_table, select_entry

        return select_entry(load_table(self.path), device=self.device, backend=self.backend,
                            precision=self.precision)


@dataclass(frozen=True)
class Score:
    """One (sub-network, tree) costed on one table: predicted step, autoregressive step, speedup."""

    step_ms: float
    ar_ms: float
    speedup: float


@dataclass(frozen=True)
class TableChoice:
    """What the search chose on one table, and how that choice scores on every compared table.

    Attributes:
        label: names the table in the report ("backend @ device").
        table: the table file.
        table_key: the entry's key.
        result: the choice on this table.
        scores: table label -> the choice costed on that table (its own label included).
    """

    label: str
    table: str
    table_key: dict
    result: object  # SearchResult (search/search.py, imported lazily: it pulls in torch)
    scores: dict[str, Score] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"label": self.label, "table": self.table, "table_key": self.table_key,
                "result": self.result.to_dict(),
                "scores": {k: dataclasses.asdict(s) for k, s in self.scores.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> TableChoice:
        from search.search import SearchResult

        return cls(data["label"], data["table"], data["table_key"], SearchResult.from_dict(data["result"]),
                   {k: Score(**v) for k, v in data["scores"].items()})


@dataclass(frozen=True)
class CompareReport(JsonRecord):
    """The searches of several tables side by side (the same τ̂ table under each)."""

    tables: tuple[TableChoice, ...]
    provenance: dict = field(default_factory=dict)

    @property
    def same_choice(self) -> bool:
        """Whether every table picked the same sub-network and tree."""
        picks = {(t.result.choice, t.result.tree) for t in self.tables}
        return len(picks) == 1

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "same_choice": self.same_choice,
                "provenance": self.provenance, "tables": [t.to_dict() for t in self.tables]}

    @classmethod
    def from_dict(cls, data: dict) -> CompareReport:
        from search.search import SearchError

        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise SearchError("Unsupported search comparison format.",
                              f"format={data.get('format')!r}, format_version={data.get('format_version')}, "
                              f"expected {FORMAT!r} {FORMAT_VERSION}")
        return cls(tuple(TableChoice.from_dict(t) for t in data["tables"]), data.get("provenance", {}))


def table_labels(keys: list[dict]) -> list[str]:
    """A distinct label per table entry key ("backend @ device", numbered when two are alike)."""
    labels = []
    for key in keys:
        label = f"{key.get('backend', '?')} @ {key.get('device', '?')}"
        if label in labels:
            label = f"{label} ({len(labels) + 1})"
        labels.append(label)
    return labels


def compare_choices(runs: list[tuple[TableSelection, dict, object]], past: int, visual_tokens: int = 0,
                    provenance: dict | None = None) -> CompareReport:
    """Costs every table's choice on every table.

    Args:
        runs: (selection, its entry, the SearchResult of the search on that entry), one per table.
        past: committed tokens the steps are costed at (as in the searches).
        visual_tokens: image tokens in a typical prompt (as in the searches).
        provenance: recorded in the report as is.

    Returns:
        The CompareReport (τ̂ of a choice is the same on every table: it is the choice's own).
    """
    from search.latency import LatencyModel
    from search.search import predicted_step

    labels = table_labels([entry["key"] for _, entry, _ in runs])
    models = {label: LatencyModel(entry) for label, (_, entry, _) in zip(labels, runs, strict=True)}
    tables = []
    for label, (selection, entry, result) in zip(labels, runs, strict=True):
        scores = {}
        for other, model in models.items():
            speedup, step, ar = predicted_step(model, result.spec, result.tree, result.tau, past, visual_tokens)
            scores[other] = Score(step, ar, speedup)
        tables.append(TableChoice(label, str(selection.path), entry["key"], result, scores))
    report = CompareReport(tuple(tables), {**(provenance or {}), "past": past, "visual_tokens": visual_tokens})
    logger.info("compared %d tables: same choice %s", len(tables), report.same_choice)
    return report


def choice_name(choice) -> str:
    """A SubnetChoice in a few characters: branch, blocks, head and FFN ratios, layer, keep, vocabulary."""
    branch = {"cross_attention": "xattn", "concat": "concat"}.get(choice.interaction, choice.interaction)
    return (f"{branch} L{choice.num_layers} h{choice.head_ratio:g} f{choice.ffn_ratio:g} @{choice.feature_layer} "
            f"keep{choice.visual_keep_ratio:g} V{choice.draft_vocab_size or 'full'}")


def tree_name(tree) -> str:
    """A tree setting in a few characters (kind top-k/depth/N)."""
    return f"{tree.kind} {tree.top_k}/{tree.depth}/{tree.node_budget}"


def format_compare(report: CompareReport) -> list[str]:
    """The report as a plain-text table, one column per table."""
    tables = report.tables
    width = max(34, *(len(t.label) + 2 for t in tables))
    rows = [("chosen for", [t.label for t in tables]),
            ("sub-network", [choice_name(t.result.choice) for t in tables]),
            ("tree (k/depth/N)", [tree_name(t.result.tree) for t in tables]),
            ("τ̂ (tokens per target pass)", [f"{t.result.tau:.2f}" for t in tables]),
            ("predicted step ms (own table)", [f"{t.result.step_ms:.2f}" for t in tables]),
            ("predicted speedup (own table)", [f"{t.result.predicted_speedup:.2f}x" for t in tables])]
    for other in tables:
        rows.append((f"speedup on {other.label}", [f"{t.scores[other.label].speedup:.2f}x" for t in tables]))
    first = max(len(name) for name, _ in rows) + 1
    lines = [f"{name:{first}s} " + "".join(f"{v:{width}s}" for v in values) for name, values in rows]
    lines.append("the tables choose " + ("the same sub-network and tree" if report.same_choice else "differently"))
    return lines


def plot_compare(report: CompareReport, path) -> str:
    """Grouped bars: each table's choice (group) by its predicted speedup on every table (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tables = report.tables
    x = np.arange(len(tables))
    width = 0.8 / len(tables)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, other in enumerate(tables):
        ax.bar(x + (i - (len(tables) - 1) / 2) * width, [t.scores[other.label].speedup for t in tables], width,
               label=f"costed on {other.label}")
    ax.set_xticks(x, [f"chosen for\n{t.label}\n{tree_name(t.result.tree)}" for t in tables], fontsize=7)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set(ylabel="predicted speedup over autoregressive")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
