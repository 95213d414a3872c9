"""`run_bench(config)`: τ, tokens/s and speedup of speculative over autoregressive decoding, one run.

Data flow: prompts file (JSON lines `{"image": path or null, "question": str}`) -> backend
(`bench/backends.py`) -> per prompt, greedy autoregressive then greedy speculative decoding on the
same prompt -> `OUT.json` (τ mean and histogram, tokens/s per method, speedup, whether the greedy
outputs are identical token for token, per-prompt rows) and `OUT.png` beside it.

Both methods run side by side in one process on the same prompts, after a warm-up on the first
prompt that is not counted. Tokens/s is the total new tokens over the total wall time of the
generate calls (prefill included); the speedup is the ratio of the two. `decode_tokens_per_s` and
`decode_speedup` leave out each call's prefill and first token (the same target pass for both
methods), which short answers otherwise dominate. `time_split` sums each method's prefill / draft /
verify / host seconds.

`limits` says how far the draft alone could move the whole-call speedup on these prompts:
`prefill_share` is the speculative calls' prefill time over their wall time (the part speculation
cannot shorten), and `zero_cost_draft_speedup` the whole-call speedup if drafting cost nothing at the
measured τ: autoregressive wall time over (autoregressive prefill + speculative verify + host). The
autoregressive prefill stands for the target's own, since the speculative one includes the draft's.

Unless `hf=False` (`--no-hf`), HF transformers' `generate` (greedy) on the PyTorch model
(`backend.hf_model_dir()`) is timed on the same prompts too, as the reference a user would otherwise
pick: `hf_generate` holds its tokens/s and how many of its outputs equal the backend's autoregressive
ones, and `ar_vs_hf` the ratio backend-autoregressive tokens/s / HF-generate tokens/s.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dream_s_edge.bench.backends import HFGenerate, make_backend, resolve_draft
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
    backend: str = "torch"  # a registered backend (bench/backends.py): torch, ort-cpu, ort-cuda, trt
    model: str | None = None  # 'default' or a local HF folder; None: the default (torch) or the artifacts' source
    # torch: draft folder, 'untrained' or 'oracle'; None: the shipped default draft for the default model,
    # else 'untrained' (dream_s_edge/default_draft.py). Runtime backends use the exported one.
    draft: str | None = None
    artifacts: str | None = None  # ort-*/trt: the folder written by `dream-s-edge export`
    precision: str | None = None  # trt: which engines (None: the only one built)
    max_new_tokens: int = 64
    max_context: int = 1024  # torch only (the artifacts fix their own)
    tree_kind: str | None = None  # None: torch's dynamic default, or the artifacts' tree
    top_k: int | None = None  # None: 4 (torch) or the artifacts' tree
    depth: int | None = None  # None: 5 (torch) or the artifacts' tree
    node_budget: int | None = None  # None: 16 (torch) or the artifacts' tree
    min_prob: float | None = None  # dynamic trees: prune below this draft probability (None: 0, or the artifacts')
    warmup: int = 1  # untimed runs of the first prompt per method
    limit: int | None = None  # use only the first N prompts
    hf: bool = True  # also time HF transformers' generate on the same prompts
    threads: int = 0  # onnxruntime intra-op threads (0: its default); torch threads are set by the CLI
    attention: str | None = None  # torch: the target's attention ('eager', 'sdpa'); None: what the draft needs


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
    config = resolve_draft(config)
    items = read_prompts(config.prompts)[: config.limit]
    backend = make_backend(config)
    images = [None if image is None else load_image(image) for image, _ in items]
    prompts = [backend.prompt(image, question) for image, (_, question) in zip(images, items, strict=True)]
    hf = HFGenerate(backend.hf_model_dir(), config.max_new_tokens, _eos_of(backend)) if config.hf else None
    hf_inputs = [hf.inputs(image, question) for image, (_, question) in zip(images, items, strict=True)] if hf else []
    for _ in range(config.warmup):
        backend.autoregressive(prompts[0])
        backend.speculative(prompts[0])
        if hf is not None:
            hf.generate(hf_inputs[0])
    rows = []
    for i, ((image, question), prompt) in enumerate(tqdm(list(zip(items, prompts, strict=True)),
                                                         desc=f"bench {config.backend}", unit="prompt")):
        ar = backend.autoregressive(prompt)
        spec = backend.speculative(prompt)
        rows.append(_row(image, question, ar, spec, hf.generate(hf_inputs[i]) if hf is not None else None))
    report = _report(config, backend, rows, hf)
    out = Path(config.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot_bench(report, out.with_suffix(".png"))
    return report


def _eos_of(backend) -> tuple[int, ...]:
    return tuple(getattr(backend, "eos", ()) or ())


def _row(image, question, ar, spec, hf=None) -> dict:
    same = np.array_equal(ar.tokens, spec.tokens)
    row = {
        "image": image, "question": question, "identical": bool(same),
        "autoregressive": ar.metrics.to_dict(), "speculative": spec.metrics.to_dict(),
        "tokens": {"autoregressive": len(ar.tokens), "speculative": len(spec.tokens)},
    }
    if hf is not None:
        tokens, wall = hf
        row["hf_generate"] = {"new_tokens": len(tokens), "wall_s": wall,
                              "tokens_per_s": len(tokens) / max(wall, 1e-9),
                              "identical_to_autoregressive": bool(np.array_equal(tokens, ar.tokens))}
    return row


def _decode_rate(rows: list[dict], method: str) -> float:
    """Tokens after each prompt's first over the wall time after its prefill, summed over prompts: the
    decode phase alone (prefill is the same target pass for both methods)."""
    tokens = sum(max(r["tokens"][method] - 1, 0) for r in rows)
    seconds = sum(r[method]["wall_s"] - r[method]["prefill_s"] for r in rows)
    return tokens / max(seconds, 1e-9)


def _time_split(rows: list[dict], method: str) -> dict:
    keys = ("prefill_s", "draft_s", "verify_s", "host_s", "wall_s")
    return {k: float(sum(r[method][k] for r in rows)) for k in keys}


def _limits(split: dict) -> dict:
    """What the draft could still change (see the module docstring), from both methods' time split."""
    ar, spec = split["autoregressive"], split["speculative"]
    free = ar["prefill_s"] + spec["verify_s"] + spec["host_s"]
    return {"prefill_share": spec["prefill_s"] / max(spec["wall_s"], 1e-9),
            "zero_cost_draft_speedup": ar["wall_s"] / max(free, 1e-9)}


def _hf_section(rows: list[dict], hf, rate: dict) -> dict:
    wall = sum(r["hf_generate"]["wall_s"] for r in rows)
    tokens = sum(r["hf_generate"]["new_tokens"] for r in rows)
    hf_rate = tokens / max(wall, 1e-9)
    return {
        "model": str(hf.model_dir), "device": str(hf.adapter.device), "attention": "sdpa",
        "tokens_per_s": hf_rate, "new_tokens": tokens, "wall_s": wall,
        "identical_to_autoregressive": sum(r["hf_generate"]["identical_to_autoregressive"] for r in rows),
        "speculative_vs_hf": rate["speculative"] / max(hf_rate, 1e-9),
    }


def _report(config: BenchConfig, backend, rows: list[dict], hf=None) -> dict:
    tree = backend.tree
    depth = tree.depth
    hist = np.zeros(depth + 1, dtype=np.int64)
    for row in rows:
        counts = row["speculative"]["accept_counts"]
        hist[: len(counts)] += counts
    passes = int(hist.sum())
    tau = float(((np.arange(depth + 1) + 1) * hist).sum() / max(passes, 1))
    rate = {m: sum(r["tokens"][m] for r in rows) / max(sum(r[m]["wall_s"] for r in rows), 1e-9)
            for m in ("autoregressive", "speculative")}
    decode = {m: _decode_rate(rows, m) for m in ("autoregressive", "speculative")}
    split = {m: _time_split(rows, m) for m in ("autoregressive", "speculative")}
    report = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": asdict(config), "backend": backend.name, "device": backend.device,
        "host": platform.processor() or platform.machine(),
        "prompts": len(rows),
        "tree": tree.to_dict(),
        "draft": {"name": config.draft if config.backend == "torch" else config.artifacts,
                  "spec": getattr(backend, "draft_spec", None)},
        "tau": {"mean": tau, "histogram": hist.tolist(), "passes": passes,
                "per_prompt": [r["speculative"]["tau"] for r in rows]},
        "tokens_per_s": rate,
        "speedup": rate["speculative"] / max(rate["autoregressive"], 1e-9),
        "decode_tokens_per_s": decode,
        "decode_speedup": decode["speculative"] / max(decode["autoregressive"], 1e-9),
        "time_split": split,
        "limits": _limits(split),
        "greedy_identical": all(r["identical"] for r in rows),
        "identical_prompts": sum(r["identical"] for r in rows),
        "mismatched_prompts": [i for i, r in enumerate(rows) if not r["identical"]],
        "hf_generate": None,
        "ar_vs_hf": None,
        "per_prompt": rows,
    }
    if hf is not None:
        report["hf_generate"] = _hf_section(rows, hf, rate)
        report["ar_vs_hf"] = rate["autoregressive"] / max(report["hf_generate"]["tokens_per_s"], 1e-9)
    return report


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
    rates = dict(report["tokens_per_s"])
    colors = ["C7", "C2"]
    title = f"{report['backend']}: speedup {report['speedup']:.2f}x (decode {report['decode_speedup']:.2f}x)"
    if report.get("hf_generate"):
        rates = {"HF generate": report["hf_generate"]["tokens_per_s"], **rates}
        colors = ["C0", *colors]
        title += f", AR/HF {report['ar_vs_hf']:.2f}x"
    bx.bar(list(rates), list(rates.values()), color=colors)
    bx.set(ylabel="tokens/s", title=title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
