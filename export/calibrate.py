"""Calibrates an exported folder's dynamic tree: how often the target accepts the draft's candidates.

Place in the data flow: an exported folder (`export/pipeline.py`) -> `runtime.Session` decodes
calibration prompts greedily with an unpruned tree of the folder's shape, every pass observed
(`runtime.decode.PassCallback`) -> `runtime.tree_calibration.acceptance_samples` samples ->
`fit_calibration` -> written into the folder's manifest (`draft.calibration`), which the runtime's
draft runners read back. Beside it: `calibration.json` (the fit, log-losses and reliability tables)
and `calibration.png` (the reliability diagram).

The prompts are the caller's (`dream-s-edge calibrate` draws them from the distillation prompt mix
with a seed of its own, never from the bench's held-out sets), so export stays free of prompt
sources. The target's outputs do not depend on the calibration: it only shapes which candidates a
tree holds, and the greedy answer stays the target's own token for token.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from export.manifest import update_manifest
from runtime.errors import SpecMismatchError, UserInputError
from runtime.session import Session
from runtime.tree_calibration import acceptance_samples, fit_calibration, log_loss, reliability, sampling_tree

logger = logging.getLogger(__name__)

REPORT_NAME = "calibration.json"
PLOT_NAME = "calibration.png"


@dataclass(frozen=True)
class CalibrateConfig:
    """What `calibrate_folder` runs.

    Attributes:
        artifacts: the exported folder (with a draft).
        max_new_tokens: tokens decoded per prompt.
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
        plot: write calibration.png beside the report.
    """

    artifacts: Path
    max_new_tokens: int = 96
    threads: int | None = None
    plot: bool = True


def collect_samples(session: Session, prompts: Iterable[tuple[object, str]], max_new_tokens: int,
                    count: int | None = None) -> tuple[np.ndarray, int]:
    """Decodes each (image, question) greedily with the session's draft, uncalibrated and unpruned.

    Returns:
        ([M, 3] samples from `acceptance_samples`, number of target passes).

    Raises:
        SpecMismatchError: the folder has no draft, or its tree is static (nothing to calibrate).
    """
    if session.draft is None:
        raise SpecMismatchError("This folder has no draft, so there is no tree to calibrate.",
                                hint="export with a draft (dream-s-edge export --draft FOLDER)")
    if session.tree.kind != "dynamic":
        raise SpecMismatchError("Only dynamic trees are calibrated: a static tree's shape is fixed.",
                                note=f"the folder's tree is {session.tree.kind}",
                                hint="export with --tree dynamic")
    spec, calibration = session.tree, session.draft.calibration
    session.tree, session.draft.calibration = sampling_tree(spec), None
    rows: list[np.ndarray] = []

    def observe(tree, result, outcome) -> None:
        target_ids = result.logits.argmax(axis=-1)  # [N] the target's greedy token after each node
        rows.append(acceptance_samples(tree.parents, tree.tokens, tree.scores, tree.valid, target_ids))

    passes = 0
    try:
        for image, question in tqdm(prompts, total=count, desc="calibrate", unit="prompt"):
            passes += session.generate(image, question, max_new_tokens=max_new_tokens, on_pass=observe).metrics.target_passes
    finally:
        session.tree, session.draft.calibration = spec, calibration
    samples = np.concatenate(rows) if rows else np.zeros((0, 3))
    return samples, passes


def calibrate_folder(config: CalibrateConfig, prompts: list[tuple[object, str]]) -> dict:
    """Fits the folder's tree calibration on `prompts` and writes it into its manifest.

    Args:
        config: the folder and decoding settings.
        prompts: (image: path, PIL image or None; question) pairs.

    Returns:
        The report written to `calibration.json` (fit, log-losses, reliability rows, counts).

    Raises:
        UserInputError: no prompts, or too few tested candidates to fit.
        SpecMismatchError: a folder without a draft or with a static tree.
    """
    if not prompts:
        raise UserInputError("Calibration needs prompts to decode.", hint="pass at least one prompt")
    started = time.perf_counter()
    session = Session.from_dir(config.artifacts, threads=config.threads)
    samples, passes = collect_samples(session, prompts, config.max_new_tokens, len(prompts))
    if samples.shape[0] < 2:
        raise UserInputError("Calibration tested too few draft candidates to fit.",
                             note=f"{samples.shape[0]} candidates over {len(prompts)} prompts, {passes} passes",
                             hint="use more prompts, or prompts with longer answers")
    calibration = fit_calibration(samples)
    update_manifest(config.artifacts, {"draft": {"calibration": calibration.to_dict()}})
    report = {
        "calibration": calibration.to_dict(),
        "prompts": len(prompts),
        "passes": passes,
        "samples": int(samples.shape[0]),
        "tree": sampling_tree(session.tree).to_dict(),
        "max_new_tokens": config.max_new_tokens,
        "log_loss": {"raw": log_loss(samples), "calibrated": log_loss(samples, calibration)},
        "reliability": {"raw": reliability(samples), "calibrated": reliability(samples, calibration)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (Path(config.artifacts) / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n")
    if config.plot:
        plot_reliability(report, Path(config.artifacts) / PLOT_NAME)
    logger.info("calibrated %s on %d candidates: %s", config.artifacts, samples.shape[0], calibration)
    return report


def plot_reliability(report: dict, out: Path) -> Path:
    """Acceptance against predicted probability, raw and calibrated, per rank group (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for ax, group, title in zip(axes, ("top1", "other"), ("the draft's best candidate", "its other candidates"),
                                strict=True):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="calibrated = diagonal")
        for kind, colour in (("raw", "tab:red"), ("calibrated", "tab:blue")):
            rows = [r for r in report["reliability"][kind] if r["group"] == group]
            if rows:
                sizes = [12 + 60 * r["count"] / max(x["count"] for x in rows) for r in rows]
                ax.scatter([r["predicted"] for r in rows], [r["accepted"] for r in rows], s=sizes, color=colour,
                           alpha=0.8, label=f"{kind} draft probability")
                ax.plot([r["predicted"] for r in rows], [r["accepted"] for r in rows], color=colour, lw=1, alpha=0.6)
        ax.set_title(title)
        ax.set_xlabel("predicted acceptance")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accepted by the target (fraction)")
    axes[0].legend(loc="upper left", fontsize=8)
    loss = report["log_loss"]
    fig.suptitle(f"Tree calibration: {report['samples']} tested candidates, {report['prompts']} prompts; "
                 f"log-loss {loss['raw']:.3f} raw -> {loss['calibrated']:.3f} calibrated", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
