"""Parity of an exported graph with its PyTorch module, checked with Polygraphy's comparator.

Place in the data flow: after each `torch.onnx.export`, `check_parity` runs the module and the ONNX
file (Polygraphy's `OnnxrtRunner`) on the same feeds, compares every output with
`CompareFunc.simple(atol, rtol)`, and returns a report per output (max abs diff, max rel diff, the
count of elements outside atol + rtol * |ref|) that goes into the manifest. A failure raises
`ExportError` with the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runtime.errors import ExportError

logger = logging.getLogger(__name__)


def output_report(name: str, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> dict:
    """Max abs / rel diff and mismatch count of one output."""
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(ref64 - got64)
    rel = diff / np.maximum(np.abs(ref64), 1e-12)
    bad = diff > atol + rtol * np.abs(ref64)
    return {
        "output": name,
        "shape": list(ref.shape),
        "max_abs_diff": float(diff.max(initial=0.0)),
        "max_rel_diff": float(rel.max(initial=0.0)),
        "mismatches": int(bad.sum()),
        "elements": int(ref.size),
    }


def summarize(reports: list[list[dict]]) -> str:
    """One line: the worst output (max abs diff) and the total mismatch count over all comparisons."""
    rows = [r for rs in reports for r in rs]
    worst = max(rows, key=lambda r: r["max_abs_diff"])
    total = sum(r["mismatches"] for r in rows)
    return f"max abs diff {worst['max_abs_diff']:.3g} ({worst['output']}), {total} mismatches"


def check_parity(
    onnx_path: Path,
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    feeds: list[dict[str, np.ndarray]],
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> dict:
    """Compares an ONNX graph on onnxruntime with a PyTorch reference over several feeds.

    Args:
        onnx_path: the exported graph.
        reference: feeds -> {output name: array}, the PyTorch module's outputs.
        feeds: input dicts (numpy), one per comparison.
        atol, rtol: tolerances of Polygraphy's `CompareFunc.simple`.

    Returns:
        {"atol", "rtol", "passed", "comparisons": [[per-output report, ...], ...]}.

    Raises:
        ExportError: an output outside the tolerances (the report is in the message).
    """
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, CompareFunc, RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR  # the report below says what matters

    runner = OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"]), name="onnxrt")
    ref_iters, ort_iters = [], []
    with runner:
        for feed in feeds:
            ort_iters.append(IterationResult(runner.infer(feed), runner_name="onnxrt"))
            ref_iters.append(IterationResult(reference(feed), runner_name="torch"))
    results = RunResults([("torch", ref_iters), ("onnxrt", ort_iters)])
    compare = CompareFunc.simple(atol=atol, rtol=rtol, check_shapes=True)
    passed = bool(Comparator.compare_accuracy(results, compare_func=compare))
    reports = [
        [output_report(name, ref[name], got[name], atol, rtol) for name in ref]
        for ref, got in zip(ref_iters, ort_iters, strict=True)
    ]
    report = {"atol": atol, "rtol": rtol, "passed": passed, "comparisons": reports}
    summary = summarize(reports)
    logger.info("parity %s: passed=%s, %s", Path(onnx_path).name, passed, summary)
    if not passed:
        raise ExportError(
            f"The exported graph {Path(onnx_path).name} does not match PyTorch.",
            note=f"atol {atol}, rtol {rtol}; {summary}",
            hint="export with attn_implementation='eager' in float32, or loosen the tolerances",
        )
    return report
