"""Generation on the PyTorch side: a question (and an image) in, a streamed answer out.

Data flow: model name -> `TargetAdapter` -> `Prompt` (processor + chat template) ->
`TorchTargetRunner` (and a draft runner when speculative) -> the runtime's loop
(`runtime.decode`) -> token ids -> `TextStreamer` -> text pieces to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dream_s_edge.examples import example_image
from dream_s_edge.runners.draft_factory import draft_runner, load_draft_model
from dream_s_edge.runners.target_torch import TorchTargetRunner
from dream_s_edge.targets import TargetAdapter, load_target
from runtime.accept import SamplingConfig
from runtime.decode import GenerationResult, autoregressive_generate, speculative_generate
from runtime.detokenize import TextStreamer
from runtime.errors import CapacityError, PromptError
from runtime.images import load_image
from runtime.runner import Prompt, RunnerLimits
from runtime.tree import TreeSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode."""

    max_new_tokens: int = 96
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    max_context: int = 1024  # KV cache size in tokens, prompt + answer

    @property
    def sampling(self) -> SamplingConfig:
        """The runtime's sampling settings."""
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p)


@dataclass(frozen=True)
class TreeOptions:
    """The draft tree used by speculative decoding."""

    kind: str = "dynamic"  # "dynamic" (EAGLE-2, sized by the fields below), "chain", or a runtime TREE_PRESETS name
    top_k: int = 4
    depth: int = 5
    node_budget: int = 16  # nodes verified per target pass, root included
    min_prob: float = 0.0  # dynamic: prune candidates below this cumulative draft probability (0: none)

    def spec(self) -> TreeSpec:
        """The runtime's tree spec."""
        if self.kind == "dynamic":
            return TreeSpec.dynamic(top_k=self.top_k, depth=self.depth, node_budget=self.node_budget,
                                    min_prob=self.min_prob)
        if self.kind == "chain":
            return TreeSpec.chain(self.depth)
        return TreeSpec.from_name(self.kind)


@dataclass(frozen=True)
class GenerationReport:
    """What one generate call produced."""

    text: str
    result: GenerationResult

    def summary(self) -> str:
        """One line: tokens, τ and throughput."""
        m = self.result.metrics
        return f"{len(self.result.tokens)} tokens, tau {m.tau:.2f}, {m.tokens_per_s:.1f} tokens/s"


def load_model(name: str) -> TargetAdapter:
    """Loads 'default' (the embedded SmolLM2 VLM) or a local HF folder of a supported family."""
    if name == "default":
        from dream_s_edge.embedded import ensure_default_target

        return load_target(ensure_default_target())
    return load_target(Path(name))


def resolve_image(image: str | None):
    """Opens `--image`: a path, `example:NAME`, or None for a text-only question."""
    if image is None:
        return None
    if image.startswith("example:"):
        return load_image(example_image(image.removeprefix("example:")))
    return load_image(image)


def check_question(question: str) -> str:
    """Returns the stripped question; refuses an empty one."""
    if not question or not question.strip():
        raise PromptError("The question is empty.", hint='ask something, e.g. "What is in this picture?"')
    return question.strip()


def build_prompt(adapter: TargetAdapter, image, question: str, max_context: int) -> Prompt:
    """Turns an image and a question into a `Prompt`; refuses an empty or too long one."""
    question = check_question(question)
    inputs = adapter.build_inputs(image, question)
    ids = inputs.pop("input_ids")[0].numpy().astype(np.int64)  # [T]
    if ids.shape[0] >= max_context:
        raise PromptError(
            "The prompt is longer than the context.",
            note=f"{ids.shape[0]} prompt tokens, context {max_context}",
            hint="shorten the question, or raise --max-context",
        )
    extras = {name: value.numpy() for name, value in inputs.items() if name != "attention_mask"}
    return Prompt(input_ids=ids, extras=extras)


def check_context(adapter: TargetAdapter, max_context: int) -> None:
    """Refuses a context longer than the model's position range."""
    if max_context > adapter.spec.max_position_embeddings:
        raise CapacityError(
            "The requested context is longer than the model supports.",
            note=f"--max-context {max_context} > {adapter.spec.max_position_embeddings} positions",
            hint=f"use --max-context {adapter.spec.max_position_embeddings} or less",
        )


def tokenizer_of(adapter: TargetAdapter):
    """The adapter's text tokenizer."""
    return getattr(adapter.processor, "tokenizer", adapter.processor)


def generate(
    adapter: TargetAdapter,
    prompt: Prompt,
    config: GenerationConfig,
    tree: TreeOptions | None = None,
    draft: str = "untrained",
    on_tokens: Callable[[np.ndarray], None] | None = None,
) -> GenerationResult:
    """Runs autoregressive or speculative decoding on one prompt with fresh runners.

    `draft` is 'untrained' (a fresh DREAM draft), 'oracle' (the target itself) or a draft folder.
    """
    check_context(adapter, config.max_context)
    common = dict(
        sampling=config.sampling,
        max_new_tokens=config.max_new_tokens,
        eos_ids=adapter.spec.eos_token_ids,
        rng=np.random.default_rng(config.seed),
        on_tokens=on_tokens,
    )
    if tree is None:
        target = TorchTargetRunner(adapter, RunnerLimits(config.max_context, 1))
        return autoregressive_generate(target, prompt, **common)
    target, runner = speculative_runners(adapter, draft, config.max_context, tree.spec())
    return speculative_generate(target, runner, prompt, tree.spec(), **common)


def speculative_runners(adapter: TargetAdapter, draft: str, max_context: int, spec: TreeSpec):
    """A target runner and a draft runner sized for `spec`; the target emits the draft's features."""
    if draft == "oracle":
        from dream_s_edge.runners.oracle import OracleDraftRunner

        budget = max(spec.node_budget, 1 + spec.scratch_slots)  # the oracle re-runs root + ancestors
        target = TorchTargetRunner(adapter, RunnerLimits(max_context, budget))
        return target, OracleDraftRunner(target, max_depth=spec.depth)
    model = load_draft_model(adapter, draft)
    wants_scores = model.spec.visual_keep_ratio < 1.0 and adapter.language_model.config._attn_implementation == "eager"
    target = TorchTargetRunner(
        adapter,
        RunnerLimits(max_context, spec.node_budget),
        feature_layers=model.spec.feature_layers,
        visual_attention=wants_scores,
    )
    return target, draft_runner(adapter, model, max_context, spec)


def run_generate(
    model: str,
    image: str | None,
    question: str,
    config: GenerationConfig,
    tree: TreeOptions | None = None,
    draft: str = "untrained",
    write: Callable[[str], None] = lambda text: None,
) -> GenerationReport:
    """The `dream-s-edge generate` job: loads, prompts, decodes and streams text to `write`."""
    check_question(question)  # refuse bad input before the slow model load
    picture = resolve_image(image)
    adapter = load_model(model)
    prompt = build_prompt(adapter, picture, question, config.max_context)
    tokenizer = tokenizer_of(adapter)
    streamer = TextStreamer(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    result = generate(adapter, prompt, config, tree, draft, on_tokens=lambda ids: write(streamer.push(ids)))
    write(streamer.finish())
    return GenerationReport(text=streamer.text, result=result)
