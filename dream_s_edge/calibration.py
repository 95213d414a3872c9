"""`dream-s-edge calibrate`: fit an exported folder's tree calibration on prompts it was never benched on.

Place in the data flow: an exported folder -> prompts (a JSON-lines file, or `calibration_prompts`
drawn from the distillation mix with a seed of its own) -> `export.calibrate.calibrate_folder`
(torch-free decoding, the fit, the manifest's `draft.calibration`) -> every later `ask`, `bench`,
`demo` and camera session over that folder scores its dynamic trees with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# About 80 s on a 2-core CPU for the default target; 64 prompts gave fits a tenth apart between seeds.
DEFAULT_PROMPTS = 128


@dataclass(frozen=True)
class CalibrationRun:
    """What to calibrate and on which prompts.

    Attributes:
        artifacts: the exported folder.
        prompts_file: JSON lines of {"image": path or null, "question": str}; None: `count` prompts
            of the distillation mix (`dream_s_edge.distill.prompts.calibration_prompts`).
        count: prompts to draw when no file is given (or the first `count` of the file).
        max_new_tokens: tokens decoded per prompt.
        threads: onnxruntime intra-op threads (None: its default).
    """

    artifacts: Path
    prompts_file: Path | None = None
    count: int = DEFAULT_PROMPTS
    max_new_tokens: int = 96
    threads: int | None = None


def calibration_inputs(run: CalibrationRun) -> list[tuple[object, str]]:
    """(image, question) pairs: the file's first `count` lines, or `count` prompts of the distillation mix."""
    if run.prompts_file is not None:
        from dream_s_edge.bench.run import read_prompts

        return read_prompts(run.prompts_file)[: run.count]
    from dream_s_edge.distill.prompts import calibration_prompts, materialize

    return [materialize(spec) for spec in calibration_prompts(run.count)]


def calibrate(run: CalibrationRun) -> dict:
    """Decodes the prompts over `run.artifacts`, fits and writes its tree calibration; returns the report."""
    from export.calibrate import CalibrateConfig, calibrate_folder  # the runtime's sessions, on first use

    config = CalibrateConfig(artifacts=Path(run.artifacts), max_new_tokens=run.max_new_tokens, threads=run.threads)
    return calibrate_folder(config, calibration_inputs(run))


def summary_lines(report: dict) -> list[str]:
    """The report in a few printable lines."""
    cal, loss = report["calibration"], report["log_loss"]
    return [
        f"tested {report['samples']} draft candidates in {report['passes']} passes over {report['prompts']} prompts "
        f"({report['seconds']} s)",
        f"logit(accept) = {cal['top1'][0]:+.3f} + {cal['top1'][1]:.3f} logit(p) for the draft's best candidate, "
        f"{cal['other'][0]:+.3f} + {cal['other'][1]:.3f} logit(p) for the others",
        f"log-loss of the target's acceptances: {loss['raw']:.4f} with the raw draft probabilities, "
        f"{loss['calibrated']:.4f} calibrated",
    ]
