"""Step latencies of the exported runners, measured side by side: target steps by node count, the
draft round, and the ratios the speculative speedup depends on.

Place in the data flow: artifact folder -> `OrtTargetRunner` / `OrtDraftRunner` -> `measure_steps`
-> `StepTimes` -> `format_table` (and later latency tables). Run it as
`python -m runtime.step_timing DIR [--context 300] [--repeats 7] [--threads 2]`.

Every repeat times each variant once, in the same order, and the table reports medians, so a busy
machine slows all of them alike and the ratios stay meaningful. Two clocks: wall time, and process
CPU time (all threads; robust against other processes, but it counts onnxruntime's spin-waits).

One draft round is what the loop pays per target pass besides verify: `advance` (the accepted
tokens, here `accepted` of them) and the tree's `tree_step` calls, plus the host work of building
the tree (`build_tree` minus its `tree_step` calls).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from runtime.runner import Prompt, Proposal
from runtime.tree import TreeSpec, build_tree


@dataclass
class Clock:
    """Samples of one timed variant: wall and process CPU seconds per repeat."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    @property
    def wall_ms(self) -> float:
        """Median wall time, milliseconds."""
        return float(np.median(self.wall)) * 1e3

    @property
    def cpu_ms(self) -> float:
        """Median process CPU time, milliseconds."""
        return float(np.median(self.cpu)) * 1e3


class _Stopwatch:
    """Times a block on both clocks into a `Clock`."""

    def __init__(self, clock: Clock):
        self.clock = clock

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.clock.add(time.perf_counter() - self.wall, time.process_time() - self.cpu)


class _TimedDraft:
    """A draft whose `tree_step` calls are timed (to split a tree's host work from its draft steps)."""

    def __init__(self, draft):
        self.draft, self.limits = draft, draft.limits
        self.wall = self.cpu = 0.0

    def tree_step(self, *args, **kwargs) -> Proposal:
        wall, cpu = time.perf_counter(), time.process_time()
        out = self.draft.tree_step(*args, **kwargs)
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        return out


@dataclass
class StepTimes:
    """What `measure_steps` found.

    Attributes:
        context: committed tokens in the target's cache while timing.
        verify: node count N -> Clock of one `target.verify` with N nodes (N = 1 is a plain step).
        draft: stage -> Clock; stages "round" (all), "advance", "tree_steps", "tree_host".
        tree: the tree spec of the draft round, or None without a draft.
        accepted: tokens per `advance` in the draft round.
    """

    context: int
    verify: dict[int, Clock]
    draft: dict[str, Clock]
    tree: TreeSpec | None
    accepted: int

    def ratio(self, clock: Clock, cpu: bool = False) -> float:
        """A clock's median over the 1-node target step's."""
        base = self.verify[1]
        return clock.cpu_ms / base.cpu_ms if cpu else clock.wall_ms / base.wall_ms


def measure_steps(target, draft=None, tree: TreeSpec | None = None, context: int = 300,
                  counts: tuple[int, ...] = (1, 2, 4, 8, 16), repeats: int = 7, accepted: int = 4,
                  seed: int = 0) -> StepTimes:
    """Times target steps by node count and (with a draft) the draft round, interleaved per repeat.

    Args:
        target: a `TargetRunner`; prefilled here with `context` random text tokens.
        draft: a `DraftRunner` or None.
        tree: the draft round's tree (required with a draft).
        context: prompt length (the cache the steps attend over).
        counts: node counts to time `verify` with (1 is always added); a chain mask is used.
        repeats: timed repeats after one untimed warm-up.
        accepted: tokens per `advance` (the round after a target pass that accepted that many).
        seed: token ids are drawn from this seed.

    Returns:
        StepTimes with medians over the repeats.
    """
    rng = np.random.default_rng(seed)
    vocab = int(target.vocab_size)
    ids = rng.integers(10, vocab - 10, context).astype(np.int64)
    result = target.prefill(Prompt(ids))
    counts = tuple(sorted({1, *counts}))
    verify = {n: Clock() for n in counts}
    stages = {name: Clock() for name in ("round", "advance", "tree_steps", "tree_host")}
    proposal = None
    if draft is not None:
        if tree is None:
            raise ValueError("a draft round needs a tree spec")
        proposal = draft.prefill(result, ids, int(ids[-1]), tree.top_k)
    for rep in range(repeats + 1):
        sink = None if rep == 0 else verify
        for n in counts:
            tokens = rng.integers(10, vocab - 10, n).astype(np.int64)
            positions = target.length + np.arange(n, dtype=np.int64)
            mask = np.tril(np.ones((n, n), dtype=bool))
            with _Stopwatch(sink[n] if sink else Clock()):
                target.verify(tokens, positions, mask)
        if draft is not None:
            proposal = _draft_round(draft, tree, proposal, result.features, accepted, rng, vocab,
                                    stages if rep else None)
    return StepTimes(context, verify, stages if draft is not None else {}, tree, accepted)


def _draft_round(draft, tree, proposal, features, accepted, rng, vocab, stages) -> Proposal:
    """One advance + one tree, timed into `stages` (None: untimed)."""
    clocks = stages or {name: Clock() for name in ("round", "advance", "tree_steps", "tree_host")}
    tokens = rng.integers(10, vocab - 10, accepted).astype(np.int64)
    timed = _TimedDraft(draft)
    root = int(tokens[-1])
    with _Stopwatch(clocks["round"]):
        with _Stopwatch(clocks["advance"]):
            proposal = draft.advance(tokens, features[:accepted], tree.top_k)
        wall, cpu = time.perf_counter(), time.process_time()
        build_tree(tree, timed, root, proposal, draft.length - 1)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    clocks["tree_steps"].add(timed.wall, timed.cpu)
    clocks["tree_host"].add(wall - timed.wall, cpu - timed.cpu)
    return proposal


def format_table(times: StepTimes) -> str:
    """A plain-text table: median wall / CPU ms and the ratio to the 1-node step, per row."""
    lines = [f"context {times.context} tokens; medians over {len(times.verify[1].wall)} repeats",
             f"{'step':28s} {'wall ms':>9s} {'x step1':>8s} {'cpu ms':>9s} {'x step1':>8s}"]

    def row(name: str, clock: Clock) -> None:
        lines.append(f"{name:28s} {clock.wall_ms:9.1f} {times.ratio(clock):8.2f} "
                     f"{clock.cpu_ms:9.1f} {times.ratio(clock, cpu=True):8.2f}")

    for n, clock in times.verify.items():
        row(f"target verify N={n}", clock)
    if times.draft:
        t = times.tree
        lines.append(f"draft round: {t.kind} top_k {t.top_k} depth {t.depth} N {t.node_budget}, "
                     f"advance of {times.accepted} tokens")
        for name, clock in times.draft.items():
            row(f"  draft {name}", clock)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """`python -m runtime.step_timing DIR`: prints the table for an artifact folder."""
    from runtime.manifest import Manifest
    from runtime.ort_draft import OrtDraftRunner
    from runtime.ort_target import OrtTargetRunner
    from runtime.session import tree_from_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--accepted", type=int, default=4)
    parser.add_argument("--counts", default="1,2,4,8,16")
    args = parser.parse_args(argv)
    manifest = Manifest.load(args.folder)
    target = OrtTargetRunner(manifest, threads=args.threads)
    draft = tree = None
    if manifest.has("draft_step"):
        draft = OrtDraftRunner(manifest, target.embeddings, threads=args.threads)
        tree = tree_from_manifest(manifest["tree"])
    counts = tuple(int(c) for c in args.counts.split(","))
    times = measure_steps(target, draft, tree, args.context, counts, args.repeats, args.accepted)
    sys.stdout.write(format_table(times) + "\n")


if __name__ == "__main__":
    main()
