"""`dream-s-edge demo`: the embedded default target and its shipped draft answer a question about a
real photograph through the torch-free speculative runtime, with τ and the speedup measured in the run.

Data flow::

    ensure_default_target() (cached HF folder)  +  default_draft_dir() (or an untrained draft)
      -> export_key(target, draft bytes, package version, export settings)
      -> cache_root()/demo-artifacts-KEY/   export/pipeline.py, once; later runs reuse the folder
      -> runtime.Session (onnxruntime CPU, no torch): an untimed warm-up of both methods, the
         speculative answer streamed, then the same prompt decoded autoregressively on the same session
      -> DemoReport: both texts and metrics, τ, tokens/s, speedup, whether the greedy outputs agree

Only the export imports torch; once the folder is cached, the demo answers without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dream_s_edge.default_draft import DRAFT_FILES, TOKEN_COUNTS_FILE, default_draft_dir
from runtime.decode import GenerationResult
from runtime.errors import PromptError, UserInputError
from runtime.tree import TreeSpec

logger = logging.getLogger(__name__)

# Bump when the cached folder depends on something the key does not cover yet.
CACHE_FORMAT_VERSION = 5  # 2: draft_step outputs only the last head_rows tokens; 3: draft_step traced with static head sizes; 4: draft_chain graph; 5: tree calibration
CACHE_PREFIX = "demo-artifacts-"
UNTRAINED = "untrained"  # export's name for a freshly initialised (seeded) draft
DEFAULT_QUESTION = "Describe this picture in one sentence."


@dataclass(frozen=True)
class DemoExportSettings:
    """How the demo exports the default target and draft (the cache key covers every field but parity)."""

    max_context: int = 1024  # committed tokens the runtime's KV cache holds
    # Measured best on onnxruntime CPU (docs/measurements/default-draft/): a depth-8 tree of at most 16
    # nodes without candidates below 10% estimated acceptance (the calibrated draft probability, below;
    # `tune`'s break-even rule gives about 0.1 on 2-core CPUs), and int4 draft weights (the draft step
    # reads its weights once per call, so int4 makes a round about half as long; the target stays float32).
    tree: TreeSpec = field(default_factory=lambda: TreeSpec.dynamic(top_k=4, depth=8, node_budget=16, min_prob=0.1))
    draft_weights: str = "int4"  # draft_step MatMul weights: float32, int8 or int4
    # The draft's 4,096 most frequent tokens of its 16,384: the training answers use about 1,200, and
    # the smaller head makes a draft pass about a fifth shorter (docs/measurements/default-draft/).
    draft_vocab: int | None = 4096
    # Prompts `dream-s-edge calibrate` decodes after the export to map the draft's probabilities to the
    # target's acceptance (dream_s_edge/calibration.py); 0: raw draft probabilities. With a trained draft
    # only: an untrained one has nothing to calibrate.
    calibration_prompts: int = 128
    parity: bool = True  # check every graph against PyTorch while exporting (does not change the files)

    def key_dict(self) -> dict:
        """The fields that change the exported files, JSON-ready."""
        return {"max_context": self.max_context, "draft_weights": self.draft_weights, "tree": self.tree.to_dict(),
                "draft_vocab": self.draft_vocab, "calibration_prompts": self.calibration_prompts}


@dataclass(frozen=True)
class DemoConfig:
    """One `dream-s-edge demo` run (greedy decoding)."""

    question: str = DEFAULT_QUESTION
    image: str | None = "example:astronaut"  # a path, example:NAME, or None for a text-only question
    max_new_tokens: int = 64
    threads: int | None = None  # onnxruntime intra-op threads (None: onnxruntime's default)
    warmup_tokens: int = 4  # untimed decode of this many tokens per method first (0: none)
    repeats: int = 3  # timed decodes per method, alternating; the median run is reported
    export: DemoExportSettings = field(default_factory=DemoExportSettings)


@dataclass(frozen=True)
class DemoArtifacts:
    """The exported folder the demo answers from."""

    folder: Path
    draft: str  # the shipped draft's folder, or 'untrained'
    exported: bool  # True: exported in this run; False: found in the cache

    @property
    def shipped_draft(self) -> bool:
        """Whether the folder holds the package's trained default draft."""
        return self.draft != UNTRAINED


@dataclass(frozen=True)
class DemoReport:
    """Speculative and autoregressive decoding of one prompt on one session, side by side."""

    text: str  # the speculative answer (streamed)
    autoregressive_text: str
    speculative: GenerationResult  # the run of median tokens/s
    autoregressive: GenerationResult  # the run of median tokens/s
    speculative_runs: tuple[GenerationResult, ...] = ()  # every timed run, in order (empty: the one above)
    autoregressive_runs: tuple[GenerationResult, ...] = ()

    @property
    def identical(self) -> bool:
        """Greedy outputs equal token for token in every run (they must: acceptance is lossless)."""
        runs = (*self.speculative_runs, *self.autoregressive_runs, self.autoregressive)
        return all(np.array_equal(self.speculative.tokens, run.tokens) for run in runs)

    @property
    def tau(self) -> float:
        """Mean tokens emitted per target pass of the speculative decode."""
        return self.speculative.metrics.tau

    @property
    def speedup(self) -> float:
        """Speculative tokens/s over autoregressive tokens/s (prefill included in both)."""
        return self.speculative.metrics.tokens_per_s / max(self.autoregressive.metrics.tokens_per_s, 1e-9)

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {"tau": self.tau, "speedup": self.speedup, "identical": self.identical,
                "runs_tokens_per_s": {"speculative": _rates(self.speculative_runs),
                                      "autoregressive": _rates(self.autoregressive_runs)},
                "speculative": self.speculative.metrics.to_dict(),
                "autoregressive": self.autoregressive.metrics.to_dict(),
                "text": self.text, "autoregressive_text": self.autoregressive_text}


def export_key(target_dir: str | Path, draft_dir: str | Path | None, settings: DemoExportSettings,
               version: str | None = None) -> str:
    """A short hash of everything the demo's exported folder depends on.

    Args:
        target_dir: the converted target's folder; its name carries the target's own build hash.
        draft_dir: the draft folder (its files' bytes are hashed), or None for the seeded untrained draft.
        settings: the export settings.
        version: the package version (None: the installed one).
    """
    if version is None:
        from export.manifest import package_version

        version = package_version()
    head = {"format": CACHE_FORMAT_VERSION, "target": Path(target_dir).name, "version": version,
            "settings": settings.key_dict(), "draft": UNTRAINED if draft_dir is None else "folder"}
    digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    names = DRAFT_FILES + ((TOKEN_COUNTS_FILE,) if settings.draft_vocab is not None else ())
    for name in names if draft_dir is not None else ():
        path = Path(draft_dir) / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"")  # missing counts: the export says so
    return digest.hexdigest()[:12]


def cached_export(target_dir: Path, draft_dir: Path | None, settings: DemoExportSettings,
                  root: Path | None = None, on_export: Callable[[Path], None] | None = None) -> DemoArtifacts:
    """The exported folder of this target and draft, exporting it first when the cache lacks it.

    The export is written to a temporary sibling and renamed into place, so an interrupted export
    never leaves a folder that looks finished.

    Args:
        target_dir: the target's HF folder.
        draft_dir: a draft folder, or None for export's seeded untrained draft.
        settings: the export settings.
        root: the cache folder (None: `cache_root()`).
        on_export: called with the folder just before a (slow) export starts; not called on a cache hit.

    Raises:
        ExportError: the export or its parity check failed.
    """
    if root is None:
        from dream_s_edge.embedded.build import cache_root

        root = cache_root()
    root = Path(root)
    draft = str(draft_dir) if draft_dir is not None else UNTRAINED
    folder = root / f"{CACHE_PREFIX}{export_key(target_dir, draft_dir, settings)}"
    if (folder / "manifest.json").is_file():
        logger.info("Reusing the demo export at %s", folder)
        return DemoArtifacts(folder=folder, draft=draft, exported=False)
    root.mkdir(parents=True, exist_ok=True)
    logger.info("Exporting the target and draft to ONNX once, into %s", folder)
    if on_export is not None:
        on_export(folder)
    from export.pipeline import ExportConfig, export_artifacts

    tmp = Path(tempfile.mkdtemp(prefix=".exporting-", dir=root))
    try:
        export_artifacts(ExportConfig(out=tmp, model=str(target_dir), draft=draft, max_context=settings.max_context,
                                      tree=settings.tree, parity=settings.parity,
                                      draft_weights=settings.draft_weights,
                                      draft_vocab=settings.draft_vocab if draft_dir is not None else None))
        if draft_dir is not None and settings.calibration_prompts > 0:
            from dream_s_edge.calibration import CalibrationRun, calibrate

            calibrate(CalibrationRun(artifacts=tmp, count=settings.calibration_prompts))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same export first: keep its folder
            logger.info("%s appeared meanwhile; keeping it", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return DemoArtifacts(folder=folder, draft=draft, exported=True)


def demo_artifacts(settings: DemoExportSettings, on_export: Callable[[Path], None] | None = None) -> DemoArtifacts:
    """The embedded default target with its shipped draft (or, missing one, an untrained draft), exported once.

    `on_export` is called with the folder before a first-run export (see `cached_export`).
    """
    from dream_s_edge.embedded import ensure_default_target

    draft_dir = default_draft_dir()
    if draft_dir is None:
        logger.warning("This package ships no trained default draft (dream_s_edge/assets/default_draft/ is "
                       "missing): the demo drafts with an untrained DREAM draft, so τ stays near 1.")
    return cached_export(ensure_default_target(), draft_dir, settings, on_export=on_export)


def open_image(image: str | None):
    """`--image`: a path, example:NAME (a bundled photograph), or None; returns an RGB PIL image or None."""
    from runtime.images import load_image

    if image is None:
        return None
    if image.startswith("example:"):
        from dream_s_edge.examples import example_image

        return load_image(example_image(image.removeprefix("example:")))
    return load_image(image)


def _rates(runs: tuple[GenerationResult, ...]) -> list[float]:
    return [run.metrics.tokens_per_s for run in runs]


def _check_repeats(repeats: int) -> None:
    if repeats < 1:
        raise UserInputError(f"--repeats must be at least 1, not {repeats}.", hint="pass --repeats 1 or more")


def _median_run(runs: list[GenerationResult]) -> GenerationResult:
    """The run of median tokens/s (the upper middle one of an even count)."""
    return sorted(runs, key=lambda run: run.metrics.tokens_per_s)[len(runs) // 2]


def answer_and_compare(folder: str | Path, image, question: str, max_new_tokens: int = 64,
                       threads: int | None = None, warmup_tokens: int = 4,
                       write: Callable[[str], None] = lambda text: None, repeats: int = 3) -> DemoReport:
    """Streams the speculative answer to `write`, then times both methods on the same prompt.

    Every decode runs greedily on one `runtime.Session` (the same runners and KV buffers), after an
    untimed warm-up of each. The streamed answer is the first speculative run; then autoregressive
    and speculative runs alternate until each method has `repeats`, and the run of median tokens/s
    of each is reported, so a noisy moment on the machine does not decide the speedup.

    Args:
        folder: an exported artifact folder with a draft.
        image: a PIL image, or None for a text-only question.
        question: the question.
        max_new_tokens: the answer's length limit.
        threads: onnxruntime intra-op threads (None: its default).
        warmup_tokens: tokens decoded per method before timing (0: no warm-up).
        write: receives the answer's text pieces as they are decoded.
        repeats: timed runs per method (at least 1).

    Raises:
        UserInputError: the folder holds no draft, or the image or question is bad.
    """
    _check_repeats(repeats)
    from runtime.session import Session

    session = Session.from_dir(folder, threads=threads)
    if session.draft is None:
        raise UserInputError(f"{folder} holds no draft graph, so there is nothing speculative to show.",
                             hint="export with a draft (dream-s-edge export --draft ...)")
    for speculative in (True, False) if warmup_tokens > 0 else ():
        session.generate(image, question, max_new_tokens=warmup_tokens, speculative=speculative)
    pieces = []
    for piece in session.ask(image, question, stream=True, max_new_tokens=max_new_tokens, speculative=True):
        pieces.append(piece)
        write(piece)
    speculative_runs, plain_runs = [session.last_result], []
    plain = session.ask(image, question, stream=False, max_new_tokens=max_new_tokens, speculative=False)
    plain_runs.append(plain.result)
    for _ in range(repeats - 1):
        speculative_runs.append(session.generate(image, question, max_new_tokens=max_new_tokens, speculative=True))
        plain_runs.append(session.generate(image, question, max_new_tokens=max_new_tokens, speculative=False))
    return DemoReport(text="".join(pieces), autoregressive_text=plain.text,
                      speculative=_median_run(speculative_runs), autoregressive=_median_run(plain_runs),
                      speculative_runs=tuple(speculative_runs), autoregressive_runs=tuple(plain_runs))


def run_demo(config: DemoConfig, write: Callable[[str], None] = lambda text: None,
             on_export: Callable[[Path], None] | None = None) -> tuple[DemoArtifacts, DemoReport]:
    """The `dream-s-edge demo` job: checks the input, exports once (cached), answers and compares.

    `write` receives the streamed answer; `on_export` is told before a first-run export starts.

    Raises:
        UserInputError: an empty question, a bad image or repeats below 1 (refused before the slow export).
        ExportError: the first-run export failed.
    """
    if not config.question or not config.question.strip():
        raise PromptError("The question is empty.", hint='ask something, e.g. "What is in this picture?"')
    _check_repeats(config.repeats)
    picture = open_image(config.image)
    artifacts = demo_artifacts(config.export, on_export)
    report = answer_and_compare(artifacts.folder, picture, config.question.strip(), config.max_new_tokens,
                                config.threads, config.warmup_tokens, write, config.repeats)
    return artifacts, report
