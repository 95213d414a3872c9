"""Soak test of the camera app: N consecutive questions on one Session through the app's own queue.

    run_soak(SoakConfig(...)) -> report dict, also written as JSON:
        questions, failures (+ the first messages), resident memory (RSS) after warm-up and at the
        end, its growth in percent, samples along the way, mean τ and tokens/s, frame counters,
        and `passed` (growth under `max_growth_pct` and no failure).

scripts/soak_camera.py is its command line.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.camera.config import CameraConfig
from runtime.errors import UserInputError

logger = logging.getLogger(__name__)

QUESTIONS = ("What is in this picture?", "What colour is the background?", "Is anyone at the door?",
             "Describe the scene in one sentence.", "How many objects can you see?")


@dataclass(frozen=True)
class SoakConfig:
    """One soak run.

    Attributes:
        artifacts: exported artifact folder.
        source: frame source (a video file or an image folder in CI).
        out: JSON report path.
        questions: how many questions, asked one after the other.
        warmup: questions before the baseline memory reading (allocators and caches settle).
        sample_every: a memory sample every this many questions.
        max_new_tokens: answer length cap.
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
        max_growth_pct: memory growth above which the run does not pass.
        timeout_s: per-question timeout.
    """

    artifacts: Path
    source: str
    out: Path
    questions: int = 1000
    warmup: int = 20
    sample_every: int = 50
    max_new_tokens: int = 16
    threads: int | None = 1
    max_growth_pct: float = 5.0
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.questions <= self.warmup:
            raise UserInputError("A soak run needs more questions than warm-up questions.",
                                 note=f"questions {self.questions}, warmup {self.warmup}")


def rss_bytes() -> int:
    """Resident memory of this process in bytes (psutil when installed, else /proc/self/statm)."""
    try:
        import psutil
    except ImportError:
        import os

        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    return psutil.Process().memory_info().rss


def _settled_rss() -> int:
    gc.collect()
    return rss_bytes()


def run_soak(config: SoakConfig) -> dict:
    """Runs the soak (see the module docstring) and writes the report to `config.out`."""
    from runtime.camera.app import CameraApp

    app = CameraApp.from_config(CameraConfig(artifacts=config.artifacts, source=config.source, threads=config.threads,
                                             max_new_tokens=config.max_new_tokens, max_pending=2))
    app.start()
    try:
        if not app.grabber.wait_for_frame(30.0):
            raise UserInputError(f"No frame from {config.source} in 30 s.", note=app.grabber.stats.message)
        report = _ask_all(app, config)
    finally:
        app.stop()
    report["source"] = app.grabber.stats.to_dict()
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    Path(config.out).write_text(json.dumps(report, indent=2))
    return report


def _ask_all(app, config: SoakConfig) -> dict:
    failures, taus, speeds, samples = [], [], [], []
    baseline = None
    start = time.perf_counter()
    for i in range(config.questions):
        if i == config.warmup:
            baseline = _settled_rss()
        job = app.answerer.submit(QUESTIONS[i % len(QUESTIONS)], origin="soak")
        if not job.wait(config.timeout_s):
            failures.append({"question": i, "error": f"no answer in {config.timeout_s} s"})
            break  # the worker is stuck: later questions would only time out too
        kind, data = job.events[-1]
        if kind == "done":
            taus.append(data["tau"])
            speeds.append(data["tokens_per_s"])
        else:
            failures.append({"question": i, "error": data})
        if (i + 1) % config.sample_every == 0:
            samples.append({"question": i + 1, "rss_mb": rss_bytes() / 2**20})
            logger.info("%d questions, RSS %.1f MB, %d failures", i + 1, samples[-1]["rss_mb"], len(failures))
    final = _settled_rss()
    growth = 100.0 * (final - baseline) / baseline if baseline else None
    return {
        "questions": config.questions,
        "warmup": config.warmup,
        "failures": len(failures),
        "failure_examples": failures[:10],
        "rss_baseline_mb": baseline / 2**20 if baseline else None,
        "rss_final_mb": final / 2**20,
        "rss_peak_sampled_mb": max((s["rss_mb"] for s in samples), default=final / 2**20),
        "rss_growth_pct": growth,
        "rss_samples": samples,
        "mean_tau": sum(taus) / len(taus) if taus else 0.0,
        "mean_tokens_per_s": sum(speeds) / len(speeds) if speeds else 0.0,
        "wall_s": time.perf_counter() - start,
        "max_new_tokens": config.max_new_tokens,
        "passed": not failures and growth is not None and growth < config.max_growth_pct,
    }
