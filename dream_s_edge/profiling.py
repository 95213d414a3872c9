"""`dream-s-edge profile` and `dream-s-edge tune`: the glue between export (draft variants), search
(tables, the latency model, the tuner) and the runtime's runners.

Data flow of `profile`::

    DIR (exported with a draft) --export/draft_variants--> DIR/variants/<choice>/ (random weights)
      --search/profile.profile_entry (Backend runners)--> table entry --save_table (merged)--> TABLE.json
      --plot_verify--> TABLE.png;  --check N--> N random DraftSpecs: measured vs predicted step
    (trt: after the timing, per-layer means of each stage from TensorRT's IProfiler -> stages.layers)

`tune --measure` (`dream_s_edge/bench/tuned.py`) decodes real prompts with the tuned setting and
the default tree side by side and reports the measured speedups.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import UserInputError
from runtime.session import tree_from_manifest
from runtime.tree import TreeSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileConfig:
    """What `dream-s-edge profile` measures."""

    artifacts: Path
    out: Path
    backend: str = "ort-cpu"  # ort-cpu, ort-cuda or trt
    precision: str | None = None  # trt engines (None: the only ones built)
    threads: int | None = None  # onnxruntime intra-op threads (None: its default)
    repeats: int = 5
    variants: tuple[str, ...] = ()  # () = every choice in export/draft_variants.VARIANTS
    check: int = 0  # also check the model on this many random DraftSpecs
    clock: str = "wall"  # "wall", or "cpu" (process CPU time: a CPU shared with other work, --threads 1)
    seed: int = 0
    layer_runs: int = 5  # trt: profiled runs per stage for per-layer times (0: skip the layer profile)


def _backend(config: ProfileConfig):
    from search.profile import Backend

    if config.backend not in ("ort-cpu", "ort-cuda", "trt"):
        raise UserInputError(f"Unknown backend {config.backend!r}.", hint="use ort-cpu, ort-cuda or trt")
    return Backend(config.backend, config.threads, config.precision)


def _variant_manifests(base, names) -> list:
    from export.draft_variants import VARIANTS, export_variant, variant_manifest, variant_spec

    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise UserInputError(f"Unknown draft variants {unknown}.", hint=f"choose from {sorted(VARIANTS)}")
    names = ["base", *[n for n in (names or VARIANTS) if n != "base"]]
    out = []
    for name in names:
        folder = export_variant(base, name, variant_spec(base["draft"]["spec"], VARIANTS[name]))
        out.append((name, variant_manifest(base, folder)))
    return out


def run_profile(config: ProfileConfig) -> dict:
    """Profiles one backend into `config.out` (merged with what the file holds); returns a summary."""
    from export.draft_variants import base_manifest
    from search.latency import LatencyModel
    from search.latency_table import new_table, save_table
    from search.profile import ProfileGrid, plot_verify, profile_entry

    start = time.perf_counter()
    base = base_manifest(config.artifacts)
    backend = _backend(config)
    variants = _variant_manifests(base, config.variants)
    exported = time.perf_counter() - start
    grid = ProfileGrid(repeats=config.repeats, draft_repeats=3 * config.repeats, clock=config.clock,
                       layer_runs=config.layer_runs)
    entry = profile_entry(base, backend, variants, grid, config.seed)
    save_table(new_table([entry]), config.out)
    plot = plot_verify(entry, Path(config.out).with_suffix(".png"))
    summary = {"table": str(config.out), "plot": plot, "export_s": round(exported, 1),
               "measure_s": entry["meta"]["seconds"], "blocks": entry["stages"]["blocks"],
               "layers": entry["stages"].get("layers", {})}
    if config.check:
        summary["check"] = check_model(base, backend, LatencyModel(entry), config)
    summary["total_s"] = round(time.perf_counter() - start, 1)
    return summary


def check_model(base, backend, model, config: ProfileConfig) -> list[dict]:
    """Measured vs predicted step latency on `config.check` random DraftSpecs (random weights)."""
    from export.draft_variants import export_variant, variant_manifest, variant_spec
    from search.latency import check_predictions, random_specs

    target = backend.target(base)
    tree = tree_from_manifest(base["tree"])
    specs = random_specs(base["draft"]["spec"], config.check, config.seed + 1)

    def make_draft(spec):
        name = "check_" + "_".join(str(spec[k]) for k in ("num_layers", "hidden_size", "num_heads", "interaction",
                                                           "draft_vocab_size"))
        folder = export_variant(base, name, variant_spec(base["draft"]["spec"], spec))
        return backend.draft(variant_manifest(base, folder), target.embeddings)

    return check_predictions(model, target, make_draft, specs, tree, repeats=2 * config.repeats, clock=config.clock)


@dataclass(frozen=True)
class TuneConfig:
    """What `dream-s-edge tune` decides for."""

    table: Path
    artifacts: Path  # the draft (its DraftSpec) and the limits its buffers were exported for
    accept: Path | None = None  # a bench JSON with measured acceptance (else the default curve)
    device: str | None = None
    backend: str | None = None
    precision: str | None = None
    past: int = 256  # committed tokens the steps are costed at


def accept_from_report(path: Path) -> tuple[list[int], TreeSpec]:
    """(accept histogram, the tree it was measured with) from a `dream-s-edge bench` JSON report."""
    report = json.loads(Path(path).read_text())
    if "tau" in report and isinstance(report.get("tree"), dict):  # the tree the bench decoded with
        return report["tau"]["histogram"], TreeSpec.from_dict(report["tree"])
    if "tau" in report and "config" in report:  # older reports: the tree flags only
        c = report["config"]
        return report["tau"]["histogram"], TreeSpec.dynamic(c["top_k"], c["depth"], c["node_budget"])
    from search.latency import find_accept_counts

    found = find_accept_counts(report)
    if found is None:
        raise UserInputError(f"{path} holds no accept_counts histogram.", hint="pass a dream-s-edge bench report")
    counts, fields = found
    return counts, TreeSpec.dynamic(int(fields.get("top_k", 4)), len(counts) - 1, int(fields.get("node_budget", 16)))


def tune_entry(config: TuneConfig) -> dict:
    """The latency table entry `tune` reads (the only one, or the one the key fields name)."""
    from search.latency_table import load_table, select_entry

    return select_entry(load_table(config.table), device=config.device, backend=config.backend,
                        precision=config.precision)


def run_tune(config: TuneConfig):
    """Chooses node budget and depth for the folder's draft on the table's device; returns (TuneResult, alpha)."""
    from runtime.manifest import Manifest
    from search.latency import DEFAULT_ALPHA, LatencyModel, fit_alpha, tune

    entry = tune_entry(config)
    manifest = Manifest.load(config.artifacts, verify_checksums=False)
    draft = manifest["draft"]
    alpha = DEFAULT_ALPHA
    if config.accept is not None:
        counts, tree = accept_from_report(config.accept)
        alpha = fit_alpha(counts, tree)
    return tune(LatencyModel(entry), draft["spec"], int(draft["top_k"]), int(manifest["limits"]["node_budget"]),
                int(draft["max_depth"]), int(draft["scratch_slots"]), config.past, alpha), alpha
