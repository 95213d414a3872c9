"""Validation τ: the draft in the real speculative loop (`runtime.decode.speculative_generate`).

The trainer calls `measure_tau` on a few held-out prompts (greedy); the number it reports is the
same τ `dream-s-edge generate --speculative` and `dream-s-edge bench` report.
"""

from __future__ import annotations

import logging

import numpy as np

from dream_s_edge.distill.prompts import PromptSpec, materialize
from dream_s_edge.draft.model import DreamDraft
from dream_s_edge.generation import TreeOptions, build_prompt
from dream_s_edge.runners.draft_factory import draft_runner
from dream_s_edge.runners.target_torch import TorchTargetRunner
from dream_s_edge.targets import TargetAdapter
from runtime.accept import GREEDY
from runtime.decode import speculative_generate
from runtime.runner import RunnerLimits

logger = logging.getLogger(__name__)


def measure_tau(adapter: TargetAdapter, model: DreamDraft, prompts: list[PromptSpec], tree: TreeOptions,
                max_new_tokens: int = 32, max_context: int = 512) -> dict:
    """Greedy speculative decoding of each prompt; τ pooled over all verify passes.

    Args:
        adapter: the target (eager attention for VTC scores when the draft prunes visual tokens).
        model: the draft (put in eval mode here; the caller restores train mode).
        prompts: held-out prompts.
        tree: the draft tree.
        max_new_tokens: answer length per prompt.
        max_context: runner context.

    Returns:
        {"tau", "accept_counts", "passes", "tokens", "per_prompt": [τ, ...]}.
    """
    spec = tree.spec()
    wants_scores = model.spec.visual_keep_ratio < 1.0 and adapter.language_model.config._attn_implementation == "eager"
    target = TorchTargetRunner(adapter, RunnerLimits(max_context, spec.node_budget),
                               feature_layers=model.spec.feature_layers, visual_attention=wants_scores)
    runner = draft_runner(adapter, model, max_context, spec)
    counts = np.zeros(spec.depth + 1, dtype=np.int64)
    per_prompt, tokens = [], 0
    for prompt_spec in prompts:
        image, question = materialize(prompt_spec)
        prompt = build_prompt(adapter, image, question, max_context)
        result = speculative_generate(target, runner, prompt, spec, GREEDY, max_new_tokens,
                                      adapter.spec.eos_token_ids)
        counts[: len(result.metrics.accept_counts)] += result.metrics.accept_counts
        per_prompt.append(result.metrics.tau)
        tokens += len(result.tokens)
    passes = int(counts.sum())
    tau = float(((np.arange(len(counts)) + 1) * counts).sum() / max(passes, 1))
    return {"tau": tau, "accept_counts": counts.tolist(), "passes": passes, "tokens": tokens,
            "per_prompt": per_prompt}
