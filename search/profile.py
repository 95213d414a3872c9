"""`dream-s-edge profile`: measures the runners of one backend into a latency table entry.

Place in the data flow: artifact folder (+ random draft variants, `export/draft_variants.py`) ->
`Backend` runners -> `profile_entry` -> table entry (`search/latency_table.py`) -> `search/latency.py`.

Every stage is timed as the speculative loop pays it: through the runner (host work included),
after one untimed warm-up, with the backend's device sync (the runners hand back host copies, so
each call has synced when it returns), by `time.perf_counter` (or process CPU time, `clock="cpu"`,
on a CPU shared with other work). Verify and draft calls are interleaved round-robin and reported as
a low quantile (`interleaved_ms`); vision and prefill as medians. Shapes are set directly (a runner's committed length is set to the past
length to time), so no timed call waits for a long prefill first. Per-block costs are differences
of variants: a draft with one more block minus the baseline.

With the trt backend, once every stage is timed, each stage runs a few more times with TensorRT's
engine profiler attached (`measure_layers`, `search/layer_profile.py`), and each layer's mean
milliseconds per stage go to the entry's optional `stages.layers`. Nothing is timed while a
profiler is attached: profiled runs are slower.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from runtime.runner import Prompt
from runtime.session import tree_from_manifest
from runtime.step_timing import measure_steps
from runtime.tree import build_tree
from search.layer_profile import LAYER_RUNS, stage_layers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileGrid:
    """The shapes a profile measures (defaults sized for the embedded default on a 2-core CPU)."""

    prefill: tuple[int, ...] = (32, 128, 256, 512)
    nodes: tuple[int, ...] = (1, 2, 4, 8, 16)
    past: tuple[int, ...] = (64, 256, 768)
    draft_past: tuple[int, ...] = (64, 512)
    advance: tuple[int, ...] = (1, 4)
    repeats: int = 5
    draft_repeats: int = 15  # draft calls are short and noisy on a shared CPU; they are cheap to repeat
    clock: str = "wall"  # "wall", or "cpu" (process CPU time; with --threads 1 on a shared CPU)
    variants: tuple[str, ...] = field(default=())  # () = all of export/draft_variants.VARIANTS
    layer_runs: int = LAYER_RUNS  # trt: profiled runs per stage for per-layer times (0: none)
    layer_past: int = 256  # trt: past length of the per-layer verify and draft profiles (capped by C)


@dataclass
class Backend:
    """How to build runners and sync for one backend: "ort-cpu", "ort-cuda" or "trt"."""

    name: str
    threads: int | None = None
    precision: str | None = None  # trt engines to load (None: the only ones built)

    def target(self, manifest):
        if self.name == "trt":
            from runtime.trt_runner import TrtTargetRunner

            return TrtTargetRunner(manifest, self.precision)
        from runtime.ort_target import OrtTargetRunner

        return OrtTargetRunner(manifest, self.provider, self.threads)

    def draft(self, manifest, embeddings):
        if self.name == "trt":
            from runtime.trt_runner import TrtDraftRunner

            return TrtDraftRunner(manifest, embeddings, self.precision)
        from runtime.ort_draft import OrtDraftRunner

        return OrtDraftRunner(manifest, embeddings, self.provider, self.threads)

    @property
    def provider(self) -> str:
        return {"ort-cpu": "cpu", "ort-cuda": "cuda"}.get(self.name, "cpu")

    def key(self, manifest) -> dict:
        target = manifest["target"]
        model = f"{target['family']} L{target['num_layers']} H{target['hidden_size']} V{target['vocab_size']}"
        if self.name == "trt":
            from runtime.cuda_memory import CudaApi
            from runtime.trt_runner import device_here

            here = device_here(CudaApi())
            return {"device": f"gpu: {here.gpu_name} sm{here.compute_capability}", "backend": "trt",
                    "backend_version": here.tensorrt_version, "precision": self.precision or "fp16", "model": model}
        import onnxruntime

        return {"device": cpu_name() if self.name == "ort-cpu" else "gpu: cuda", "backend": self.name,
                "backend_version": onnxruntime.__version__, "precision": "fp32", "model": model}


def cpu_name() -> str:
    """"cpu: <model name> x<cores>" from /proc/cpuinfo (platform.processor() elsewhere)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {name} x{os.cpu_count()}"


def median_ms(fn, repeats: int, before=None) -> float:
    """Median wall milliseconds of `fn()` over `repeats` after one warm-up; `before()` runs untimed."""
    samples = []
    for i in range(repeats + 1):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        if i:
            samples.append(time.perf_counter() - start)
    return float(np.median(samples)) * 1e3


QUANTILE = 0.25  # the statistic of the interleaved timings (see interleaved_ms)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved_ms(jobs: list[tuple], repeats: int, rng: np.random.Generator, quantile: float = QUANTILE,
                   clock: str = "wall", groups: list | None = None) -> list[float]:
    """Wall ms of each job `(fn, before)` over `repeats`, the jobs timed round-robin in a fresh random
    order each repeat (after one untimed warm-up round), so load from other processes and clock drift
    spread over all jobs alike instead of biasing whichever ran during a busy spell.

    Reports the `quantile` of the samples (0.25 by default, 0.5 = median): on a CPU shared with
    other work the upper samples are other processes' bursts, not the step; on a quiet device the
    quantiles are close together. Tables and `--check` use the same statistic.

    `clock` "wall" is `time.perf_counter` (what a device reports); "cpu" is this process's CPU time
    (`time.process_time`), for a CPU shared with other work: with one onnxruntime thread it is the
    latency the step would have on a core of its own, and other processes do not enter it.

    `groups` (one label per job) keeps the jobs of a group together, in their given order, and
    shuffles only the groups: a draft's calls then run back to back as in the loop (its weights
    warm in the caches after the first call), while the drafts take turns.
    """
    tick = CLOCKS[clock]
    labels = list(range(len(jobs))) if groups is None else list(groups)
    order_of = {g: [i for i, label in enumerate(labels) if label == g] for g in dict.fromkeys(labels)}
    samples = [[] for _ in jobs]
    for rep in range(repeats + 1):
        keys = list(order_of)
        for i in (i for g in rng.permutation(len(keys)) for i in order_of[keys[g]]):
            fn, before = jobs[i]
            if before is not None:
                before()
            start = tick()
            fn()
            if rep:
                samples[i].append(tick() - start)
    return [float(np.quantile(s, quantile)) * 1e3 for s in samples]


def measure_target(target, grid: ProfileGrid, rng: np.random.Generator, manifest) -> dict:
    """Vision, prefill by length and verify by (nodes, past), all through the target runner."""
    vocab, C = target.vocab_size, target.limits.max_context
    stages = {"vision": [], "prefill": [], "verify": []}
    if manifest.has("vision"):
        size = manifest["processor"]["image"]["max_image_size"]
        pixels = rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
        encode = getattr(target, "encode_images", None) or (lambda p: target.vision.run({target._pixels: p}))
        stages["vision"].append({"images": 1, "ms": median_ms(partial(encode, pixels), grid.repeats)})
    for tokens in (t for t in grid.prefill if t <= C):
        ids = rng.integers(10, vocab - 10, tokens)
        stages["prefill"].append({"tokens": tokens, "ms": median_ms(partial(target.prefill, Prompt(ids)),
                                                                    max(grid.repeats // 2, 1))})
    rows, jobs = [], []
    for past in (p for p in grid.past if p <= C):
        for nodes in (n for n in grid.nodes if n <= target.limits.node_budget):
            tokens = rng.integers(10, vocab - 10, nodes)
            mask = np.tril(np.ones((nodes, nodes), dtype=bool))
            rows.append({"nodes": nodes, "past": past})
            jobs.append((partial(target.verify, tokens, past + np.arange(nodes), mask),
                         partial(setattr, target.cache, "length", past)))
    for row, ms in zip(rows, interleaved_ms(jobs, grid.repeats, rng, clock=grid.clock), strict=True):
        stages["verify"].append({**row, "ms": ms})
    return stages


def _fake_state(draft, past: int) -> None:
    """Puts a draft runner at `past` committed positions (contents are whatever the buffers hold)."""
    draft.reset()
    draft._root_pos = past
    draft._n_self = past + 1


def draft_jobs(draft, name: str, spec: dict, grid: ProfileGrid, tree, rng) -> tuple[list[dict], list[tuple]]:
    """(rows, jobs): advance(A) and tree_step(k) of one draft runner at each draft past length, and a
    whole draft round as the loop runs it (advance of `ROUND_ACCEPTED` tokens, then the tree)."""
    top_k = tree.top_k
    rows, jobs, S = [], [], draft.limits.node_budget
    vocab = draft.embeddings.shape[0]
    for past in (p for p in grid.draft_past if p + max(grid.advance) < draft.limits.max_context):
        for count in grid.advance:
            tokens = rng.integers(10, vocab - 10, count)
            feats = rng.standard_normal((count, draft.feature_dim)).astype(np.float32)
            rows.append({"variant": name, "spec": spec, "call": "advance", "new": count, "past": past})
            jobs.append((partial(draft.advance, tokens, feats, top_k), partial(_fake_state, draft, past)))
        n = min(top_k, S)
        tokens = rng.integers(10, vocab - 10, n)
        mask = np.zeros((n, S), dtype=bool)
        mask[np.arange(n), np.arange(n)] = True
        rows.append({"variant": name, "spec": spec, "call": "tree_step", "new": n, "past": past, "runs": TREE_RUNS})
        step = partial(draft.tree_step, tokens, np.full(n, past + 1), np.arange(n), mask, top_k)
        jobs.append((partial(_repeat, step, TREE_RUNS), partial(_fake_state, draft, past)))
        tokens = rng.integers(10, vocab - 10, ROUND_ACCEPTED)
        feats = rng.standard_normal((ROUND_ACCEPTED, draft.feature_dim)).astype(np.float32)
        rows.append({"variant": name, "spec": spec, "call": "round", "new": ROUND_ACCEPTED, "past": past,
                     "tree": tree.to_dict()})
        jobs.append((partial(_round, draft, tree, tokens, feats), partial(_fake_state, draft, past)))
    return rows, jobs


ROUND_ACCEPTED = 4


def _round(draft, tree, tokens, feats) -> None:
    """One draft round of the loop: advance by the accepted tokens, then build the whole tree."""
    proposal = draft.advance(tokens, feats, tree.top_k)
    build_tree(tree, draft, int(tokens[-1]), proposal, draft.length - 1)


TREE_RUNS = 4  # tree steps run back to back in the loop (warm caches and thread pool); timed together


def _repeat(fn, times: int) -> None:
    for _ in range(times):
        fn()


SPEC_FIELDS = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_size", "interaction",
               "draft_vocab_size", "visual_keep_ratio")


def spec_choice(spec: dict) -> dict:
    """The DraftSpec fields the search varies."""
    return {k: spec[k] for k in SPEC_FIELDS}


def block_costs(rows: list[dict], top_k: int) -> dict[str, float]:
    """Per-block costs by repetition: a variant with one more block minus its baseline (tree_step ms)."""
    def mean_ms(variant):
        found = [r["ms"] for r in rows if r["variant"] == variant and r["call"] == "tree_step"]
        return float(np.mean(found)) if found else None

    pairs = {"decoder_block@576": ("base", "layers1"), "decoder_block@576(3-2)": ("layers3", "base"),
             "decoder_block@384": ("width384", "width384_layers1"),
             "decoder_block@768": ("width768", "width768_layers1"),
             "cross_attention+memory": ("base", "none"), "concat_fc-vs-cross": ("concat", "base"),
             "full_vocab_head-vs-8192": ("base", "vocab8192")}
    out = {}
    for name, (a, b) in pairs.items():
        if mean_ms(a) is not None and mean_ms(b) is not None:
            out[name] = mean_ms(a) - mean_ms(b)
    return out


def profile_entry(manifest, backend: Backend, variants: list[tuple[str, object]], grid: ProfileGrid,
                  seed: int = 0) -> dict:
    """Measures everything into one table entry.

    Args:
        manifest: the base artifact folder's manifest (with a draft).
        backend: which runners.
        variants: [(name, Manifest of the variant)]; the first must be "base" (the folder's own shapes).
        grid: the shapes to measure.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    target = backend.target(manifest)
    stages = measure_target(target, grid, rng, manifest)
    tree = tree_from_manifest(manifest["tree"])
    rows, jobs, base_draft = [], [], None
    for name, vmanifest in variants:  # every variant's runner stays open: their calls are interleaved
        draft = backend.draft(vmanifest, target.embeddings)
        found = draft_jobs(draft, name, spec_choice(vmanifest["draft"]["spec"]), grid, tree, rng)
        rows += found[0]
        jobs += found[1]
        if name == "base":
            base_draft = draft
            times = measure_steps(target, draft, tree, context=min(256, target.limits.max_context // 2),
                                  counts=(tree.node_budget,), repeats=grid.repeats, accepted=4, seed=seed)
            stages["tree_host"] = [{"depth": tree.depth, "top_k": tree.top_k, "nodes": tree.node_budget,
                                    "ms": times.draft["tree_host"].wall_ms}]
    groups = [(row["variant"], row["past"]) for row in rows]  # a variant's calls back to back, as in a round
    measured = interleaved_ms(jobs, grid.draft_repeats, rng, clock=grid.clock, groups=groups)
    stages["draft"] = [{**row, "ms": ms / row.get("runs", 1)} for row, ms in zip(rows, measured, strict=True)]
    stages["blocks"] = block_costs(stages["draft"], tree.top_k)
    if backend.name == "trt" and grid.layer_runs > 0:  # after all timing: profiled runs are slower
        stages["layers"] = measure_layers(target, base_draft, tree, grid, rng, manifest)
    limits = manifest["limits"]
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "repeats": grid.repeats, "threads": backend.threads,
            "draft_repeats": grid.draft_repeats, "clock": grid.clock,
            "layer_runs": grid.layer_runs if "layers" in stages else 0,
            "statistic": f"quantile {QUANTILE} of interleaved repeats (verify, draft); median (vision, prefill); "
                         "layers: mean of TensorRT IProfiler reports",
            "max_context": limits["max_context"], "node_budget": limits["node_budget"],
            "tree": manifest["tree"], "scratch_slots": manifest["draft"]["scratch_slots"],
            "tokens_per_image": manifest["target"].get("tokens_per_image", 0),
            "seconds": round(time.perf_counter() - start, 1)}
    return {"key": backend.key(manifest), "meta": meta, "stages": stages}


def measure_layers(target, draft, tree, grid: ProfileGrid, rng: np.random.Generator, manifest) -> dict:
    """Per-layer TensorRT times of each stage at one shape (`stages.layers`, see `search/layer_profile.py`).

    Stages: vision (one image), prefill (the longest grid length up to 256), verify (the tree's
    node budget at `grid.layer_past`), and with a draft its advance (`ROUND_ACCEPTED` tokens, with
    the memory graph) and one tree_step (top_k nodes), both at `grid.layer_past` draft positions.

    Args:
        target: a `TrtTargetRunner` (its `decoder` and `vision` graphs are profiled).
        draft: the base `TrtDraftRunner` (`step`, `memory_graph`), or None.
        tree: the manifest's tree (node budget, top_k).
    """
    vocab, C, runs = target.vocab_size, target.limits.max_context, grid.layer_runs
    nodes = min(tree.node_budget, target.limits.node_budget)
    past = max(min(grid.layer_past, C - nodes), 0)
    out = {}
    if target.vision is not None:
        size = manifest["processor"]["image"]["max_image_size"]
        pixels = rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
        out["vision"] = stage_layers({"vision": target.vision}, partial(target.encode_images, pixels),
                                     {"images": 1}, runs)
    length = max((t for t in grid.prefill if t <= min(C, 256)), default=min(C, *grid.prefill))
    prompt = Prompt(rng.integers(10, vocab - 10, length))
    out["prefill"] = stage_layers({"decoder": target.decoder}, partial(target.prefill, prompt), {"tokens": length}, runs)
    verify = partial(target.verify, rng.integers(10, vocab - 10, nodes), past + np.arange(nodes),
                     np.tril(np.ones((nodes, nodes), dtype=bool)))
    out["verify"] = stage_layers({"decoder": target.decoder}, verify, {"nodes": nodes, "past": past}, runs,
                                 before=partial(setattr, target.cache, "length", past))
    if draft is not None:
        out.update(_draft_layers(draft, tree, past, runs, rng))
    return out


def _draft_layers(draft, tree, past: int, runs: int, rng: np.random.Generator) -> dict:
    """Per-layer rows of the draft's advance (step + memory graphs) and one tree_step (step graph)."""
    vocab, S, top_k = draft.embeddings.shape[0], draft.limits.node_budget, tree.top_k
    past = max(min(past, draft.limits.max_context - ROUND_ACCEPTED - 1), 0)
    tokens = rng.integers(10, vocab - 10, ROUND_ACCEPTED)
    feats = rng.standard_normal((ROUND_ACCEPTED, draft.feature_dim)).astype(np.float32)
    state = partial(_fake_state, draft, past)
    graphs = {"draft_step": draft.step, "draft_memory": draft.memory_graph}
    out = {"draft_advance": stage_layers(graphs, partial(draft.advance, tokens, feats, top_k),
                                         {"new": ROUND_ACCEPTED, "past": past}, runs, before=state)}
    n = min(top_k, S)
    mask = np.zeros((n, S), dtype=bool)
    mask[np.arange(n), np.arange(n)] = True
    step = partial(draft.tree_step, rng.integers(10, vocab - 10, n), np.full(n, past + 1), np.arange(n), mask, top_k)
    out["draft_tree_step"] = stage_layers({"draft_step": draft.step}, step, {"new": n, "past": past}, runs, before=state)
    return out


def plot_verify(entry: dict, path) -> str:
    """Verify cost against node count, one line per past length (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = entry["stages"]["verify"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for past in sorted({r["past"] for r in rows}):
        pts = sorted((r["nodes"], r["ms"]) for r in rows if r["past"] == past)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"past {past}")
    key = entry["key"]
    ax.set(xlabel="tree nodes verified (N)", ylabel="target verify, ms",
           title=f"{key['backend']} {key['backend_version']} {key['precision']}\n{key['device']}")
    ax.title.set_fontsize(8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
