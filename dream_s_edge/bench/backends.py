"""Bench backends: a small registry of ways to run the same prompts autoregressively and speculatively.

A backend is built from a `BenchConfig` and offers three calls (`BenchBackend`): turn an image and
a question into a `runtime.runner.Prompt`, decode it autoregressively, decode it speculatively. Both
decodes must go through the runtime's one loop (`runtime.decode`), so τ, tokens/s and the greedy
equality check mean the same thing for every backend. "torch" (PyTorch runners) is built in; the
ONNX Runtime / TensorRT backends register themselves with `register_backend("ort-cpu")` etc. and
`dream-s-edge bench --backend NAME` picks them up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.accept import GREEDY
from runtime.decode import GenerationResult, autoregressive_generate, speculative_generate
from runtime.errors import UserInputError
from runtime.runner import Prompt, RunnerLimits

logger = logging.getLogger(__name__)


class BenchBackend(Protocol):
    """What `run_bench` asks of a backend (greedy decoding only)."""

    name: str
    device: str  # where it runs, in words (for the report)

    def prompt(self, image, question: str) -> Prompt:
        """A PIL image (or None) and a question -> the tokenized prompt."""

    def autoregressive(self, prompt: Prompt) -> GenerationResult:
        """Greedy decoding, one target pass per token."""

    def speculative(self, prompt: Prompt) -> GenerationResult:
        """Greedy speculative tree decoding with the configured draft and tree."""


BACKENDS: dict[str, Callable[..., BenchBackend]] = {}


def register_backend(name: str):
    """Decorator: registers a backend factory `factory(config) -> BenchBackend` under `name`."""

    def decorate(factory):
        BACKENDS[name] = factory
        return factory

    return decorate


def make_backend(config) -> BenchBackend:
    """The backend `config.backend` names.

    Raises:
        UserInputError: no backend of that name is registered.
    """
    if config.backend not in BACKENDS:
        raise UserInputError(f"Unknown bench backend {config.backend!r}.",
                             hint=f"use one of {sorted(BACKENDS)}")
    return BACKENDS[config.backend](config)


@register_backend("torch")
class TorchBackend:
    """PyTorch runners on the loaded target: one AR runner and one speculative pair, built once."""

    name = "torch"

    def __init__(self, config):
        import torch

        from dream_s_edge.generation import TreeOptions, speculative_runners
        from dream_s_edge.runners.target_torch import TorchTargetRunner

        self.config = config
        self.adapter = _load(config)
        self.tree = TreeOptions(kind=config.tree_kind, top_k=config.top_k, depth=config.depth,
                                node_budget=config.node_budget).spec()
        self.ar_target = TorchTargetRunner(self.adapter, RunnerLimits(config.max_context, 1))
        self.spec_target, self.draft = speculative_runners(self.adapter, config.draft, config.max_context, self.tree)
        self.device = f"{self.adapter.device} ({torch.get_num_threads()} threads)"
        self.eos = self.adapter.spec.eos_token_ids

    def prompt(self, image, question: str) -> Prompt:
        from dream_s_edge.generation import build_prompt

        return build_prompt(self.adapter, image, question, self.config.max_context)

    def autoregressive(self, prompt: Prompt) -> GenerationResult:
        return autoregressive_generate(self.ar_target, prompt, GREEDY, self.config.max_new_tokens, self.eos,
                                       np.random.default_rng(0))

    def speculative(self, prompt: Prompt) -> GenerationResult:
        return speculative_generate(self.spec_target, self.draft, prompt, self.tree, GREEDY,
                                    self.config.max_new_tokens, self.eos, np.random.default_rng(0))


def _load(config):
    """The target; eager attention when the draft prunes visual tokens (VTC needs the scores)."""
    from dream_s_edge.runners.draft_factory import UNTRAINED
    from dream_s_edge.targets import load_target

    path = _model_dir(config.model)
    attn = "sdpa"
    if config.draft not in (UNTRAINED, "oracle"):
        import json

        spec = json.loads((Path(config.draft) / "config.json").read_text()).get("draft_spec", {})
        attn = "eager" if spec.get("visual_keep_ratio", 1.0) < 1.0 else "sdpa"
    elif config.draft == UNTRAINED:
        attn = "eager"  # the untrained preset keeps 75% of visual tokens
    return load_target(path, attn_implementation=attn)


def _model_dir(model: str) -> Path:
    if model == "default":
        from dream_s_edge.embedded import ensure_default_target

        return ensure_default_target()
    return Path(model)
