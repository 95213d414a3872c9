"""`run_bench(config)`: τ, tokens/s and speedup of speculative over autoregressive decoding, one run.

Data flow: prompts file (JSON lines `{"image": path or null, "question": str}`) -> backend
(`bench/backends.py`) -> per prompt, greedy autoregressive then greedy speculative decoding on the
same prompt -> `OUT.json` (τ mean and histogram, tokens/s per method, speedup, whether the greedy
outputs are identical token for token, per-prompt rows) and `OUT.png` beside it.

Both methods run side by side in one process on the same prompts, after a warm-up on the first
prompt that is not counted. Tokens/s is the total new tokens over the total wall time of the
generate calls (prefill included); the speedup is the ratio of the two.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dream_s_edge.bench.backends import make_backend
from runtime.errors import UserInputError
from runtime.images import load_image

logger = logging.getLogger(__name__)

FORMAT = "dream-s-edge-bench"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BenchConfig:
    """One `dream-s-edge bench` run (greedy decoding)."""

    prompts: str  # JSON-lines file of {"image": path or null, "question": str}
    json_out: str  # report path; the plot goes beside it with a .png suffix
    backend: str = "torch"  # a registered backend (bench/backends.py)
    model: str = "default"  # 'default' or a local HF folder
    draft: str = "untrained"  # draft folder, 'untrained' or 'oracle'
    max_new_tokens: int = 64
    max_context: int = 1024
    tree_kind: str = "dynamic"
    top_k: int = 4
    depth: int = 5
    node_budget: int = 16
    warmup: int = 1  # untimed runs of the first prompt per method
    limit: int | None = None  # use only the first N prompts


def read_prompts(path) -> list[tuple[str | None, str]]:
    """(image path or None, question) per line of a JSON-lines file.

    Raises:
        UserInputError: a missing file, or a line that is not {"image", "question"}.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"No prompts file {path}.", hint='write one {"image": ..., "question": ...} per line')
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            out.append((item.get("image"), str(item["question"])))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise UserInputError(f"{path}:{number} is not a prompt line.", note=str(e),
                                 hint='each line is {"image": path or null, "question": str}') from e
    if not out:
        raise UserInputError(f"{path} holds no prompts.")
    return out


def run_bench(config: BenchConfig) -> dict:
    """Benchmarks the configured backend on the prompts; writes and returns the report."""
    items = read_prompts(config.prompts)[: config.limit]
    backend = make_backend(config)
    prompts = [backend.prompt(None if image is None else load_image(image), question) for image, question in items]
    for _ in range(config.warmup):
        backend.autoregressive(prompts[0])
        backend.speculative(prompts[0])
    rows = []
    for (image, question), prompt in tqdm(list(zip(items, prompts, strict=True)), desc=f"bench {config.backend}", unit="prompt"):
        ar = backend.autoregressive(prompt)
        spec = backend.speculative(prompt)
        rows.append(_row(image, question, ar, spec))
    report = _report(config, backend, rows)
    out = Path(config.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot_bench(report, out.with_suffix(".png"))
    return report


def _row(image, question, ar, spec) -> dict:
    same = np.array_equal(ar.tokens, spec.tokens)
    return {
        "image": image, "question": question, "identical": bool(same),
        "autoregressive": ar.metrics.to_dict(), "speculative": spec.metrics.to_dict(),
        "tokens": {"autoregressive": len(ar.tokens), "speculative": len(spec.tokens)},
    }


def _report(config: BenchConfig, backend, rows: list[dict]) -> dict:
    depth = config.depth
    hist = np.zeros(depth + 1, dtype=np.int64)
    for row in rows:
        counts = row["speculative"]["accept_counts"]
        hist[: len(counts)] += counts
    passes = int(hist.sum())
    tau = float(((np.arange(depth + 1) + 1) * hist).sum() / max(passes, 1))
    rate = {m: sum(r["tokens"][m] for r in rows) / max(sum(r[m]["wall_s"] for r in rows), 1e-9)
            for m in ("autoregressive", "speculative")}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": asdict(config), "backend": backend.name, "device": backend.device,
        "host": platform.processor() or platform.machine(),
        "prompts": len(rows),
        "tau": {"mean": tau, "histogram": hist.tolist(), "passes": passes,
                "per_prompt": [r["speculative"]["tau"] for r in rows]},
        "tokens_per_s": rate,
        "speedup": rate["speculative"] / max(rate["autoregressive"], 1e-9),
        "greedy_identical": all(r["identical"] for r in rows),
        "mismatched_prompts": [i for i, r in enumerate(rows) if not r["identical"]],
        "per_prompt": rows,
    }


def plot_bench(report: dict, path) -> Path:
    """Draws the acceptance histogram and the tokens/s of both methods (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
    hist = report["tau"]["histogram"]
    ax.bar(np.arange(len(hist)) + 1, hist)
    ax.set(xlabel="tokens emitted per target pass", ylabel="target passes",
           title=f"Acceptance (τ = {report['tau']['mean']:.2f})")
    rates = report["tokens_per_s"]
    bx.bar(list(rates), list(rates.values()), color=["C7", "C2"])
    bx.set(ylabel="tokens/s", title=f"{report['backend']}: speedup {report['speedup']:.2f}x")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
