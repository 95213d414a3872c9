"""Per-call decoding metrics: acceptance (τ and its histogram), throughput and where the time went.

Place in the data flow: the loop in `runtime/decode.py` times each stage with `Metrics.timed(stage)`
(time.perf_counter) and records each verify pass with `Metrics.record_pass`; the caller gets the
filled object in `GenerationResult.metrics` and `to_dict()` for JSON reports.

Stages: "prefill" (target and draft prefill), "draft" (tree building and `draft.advance`), "verify"
(`target.verify` and `target.commit`); "host" is everything else in the call (acceptance, tree
bookkeeping, streaming callbacks), computed as the remainder of the wall time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

STAGES = ("prefill", "draft", "verify")


@dataclass
class Metrics:
    """Counters of one generate call.

    Attributes:
        accept_counts: histogram, accept_counts[a] = verify passes that accepted a drafted tokens
            (so emitted a + 1 before any EOS / max_new_tokens truncation); length depth + 1.
        new_tokens: tokens returned to the caller (after truncation).
        target_passes: target forward calls after prefill (verify passes).
        stage_s: seconds spent per stage in STAGES.
        wall_s: seconds of the whole call.
        reused_prompt_tokens: leading prompt tokens the prefill did not run again (their K/V kept
            from the previous prompt, `runtime.prompt_head`).
    """

    accept_counts: list[int] = field(default_factory=lambda: [0])
    new_tokens: int = 0
    target_passes: int = 0
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    wall_s: float = 0.0
    reused_prompt_tokens: int = 0

    @classmethod
    def for_depth(cls, depth: int) -> Metrics:
        """Empty metrics with a histogram for up to `depth` accepted tokens per pass."""
        return cls(accept_counts=[0] * (depth + 1))

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Adds the time spent inside the block to `stage_s[stage]`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_s[stage] += time.perf_counter() - start

    def record_pass(self, accepted: int) -> None:
        """Counts one verify pass that accepted `accepted` drafted tokens."""
        self.target_passes += 1
        self.accept_counts[accepted] += 1

    @property
    def tau(self) -> float:
        """τ, mean tokens emitted per verify pass (bonus included, before truncation)."""
        if not self.target_passes:
            return 0.0
        return sum((a + 1) * c for a, c in enumerate(self.accept_counts)) / self.target_passes

    @property
    def host_s(self) -> float:
        """Wall time not spent in a timed stage."""
        return max(self.wall_s - sum(self.stage_s.values()), 0.0)

    @property
    def tokens_per_s(self) -> float:
        """New tokens over the whole call's wall time (prefill included)."""
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first over the wall time after prefill."""
        decode_s = self.wall_s - self.stage_s["prefill"]
        return max(self.new_tokens - 1, 0) / decode_s if decode_s > 0 else 0.0

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {
            "tau": self.tau,
            "accept_counts": list(self.accept_counts),
            "new_tokens": self.new_tokens,
            "target_passes": self.target_passes,
            "tokens_per_s": self.tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "wall_s": self.wall_s,
            "prefill_s": self.stage_s["prefill"],
            "draft_s": self.stage_s["draft"],
            "verify_s": self.stage_s["verify"],
            "host_s": self.host_s,
            "reused_prompt_tokens": self.reused_prompt_tokens,
        }
