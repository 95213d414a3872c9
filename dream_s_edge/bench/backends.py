"""Bench backends: a small registry of ways to run the same prompts autoregressively and speculatively.

A backend is built from a `BenchConfig` and offers three calls (`BenchBackend`): turn an image and
a question into a `runtime.runner.Prompt`, decode it autoregressively, decode it speculatively. Both
decodes must go through the runtime's one loop (`runtime.decode`), so τ, tokens/s and the greedy
equality check mean the same thing for every backend. `dream-s-edge bench --backend NAME` picks one:

  torch      PyTorch runners on the loaded target (`--model`, `--draft`, tree flags).
  ort-cpu    the torch-free runtime (`runtime/ort_target.py`, `runtime/ort_draft.py`) over an artifact
  ort-cuda   folder from `dream-s-edge export` (`--artifacts DIR`) on onnxruntime's CPU / CUDA provider;
             draft and tree come from the manifest (tree flags may resize a dynamic tree).
  trt        `runtime/trt_runner.py` over the engines `dream-s-edge build-engines` added to the folder;
             refused with an `EngineError` where TensorRT or a CUDA GPU is missing.

`HFGenerate` is the reference a user would otherwise pick: transformers' `generate` (greedy) on the
PyTorch model, timed on the same prompts; `hf_model_dir` says where each backend finds that model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.accept import GREEDY
from runtime.decode import GenerationResult, autoregressive_generate, speculative_generate
from runtime.errors import EngineError, UserInputError
from runtime.runner import Prompt, RunnerLimits
from runtime.tree import TreeSpec

logger = logging.getLogger(__name__)


class BenchBackend(Protocol):
    """What `run_bench` asks of a backend (greedy decoding only)."""

    name: str
    device: str  # where it runs, in words (for the report)
    tree: TreeSpec  # the speculative tree (its depth sizes the τ histogram)
    draft_spec: dict | None  # the draft's DraftSpec as a dict (None: no DREAM draft, e.g. the oracle)

    def prompt(self, image, question: str) -> Prompt:
        """A PIL image (or None) and a question -> the tokenized prompt."""

    def autoregressive(self, prompt: Prompt) -> GenerationResult:
        """Greedy decoding, one target pass per token."""

    def speculative(self, prompt: Prompt) -> GenerationResult:
        """Greedy speculative tree decoding with the configured draft and tree."""

    def hf_model_dir(self) -> Path:
        """The PyTorch model folder HF `generate` is timed on."""


BACKENDS: dict[str, Callable[..., BenchBackend]] = {}


def register_backend(name: str):
    """Decorator: registers a backend factory `factory(config) -> BenchBackend` under `name`."""

    def decorate(factory):
        BACKENDS[name] = factory
        return factory

    return decorate


def resolve_draft(config):
    """The config with `draft` filled in for the torch backend: the shipped default draft for the default
    model, else 'untrained' (the report then records the draft that ran)."""
    if config.backend != "torch" or config.draft is not None:
        return config
    from dream_s_edge.default_draft import draft_or_default

    return replace(config, draft=draft_or_default(None, config.model))


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

        config = resolve_draft(config)
        self.config = config
        self.adapter = _load(config)
        self.tree = TreeOptions(kind=config.tree_kind or "dynamic", top_k=config.top_k or 4,
                                depth=config.depth or 5, node_budget=config.node_budget or 16,
                                min_prob=config.min_prob or 0.0).spec()
        self.ar_target = TorchTargetRunner(self.adapter, RunnerLimits(config.max_context, 1))
        self.spec_target, self.draft = speculative_runners(self.adapter, config.draft, config.max_context, self.tree)
        self.device = f"{self.adapter.device} ({torch.get_num_threads()} threads)"
        self.eos = self.adapter.spec.eos_token_ids
        model = getattr(self.draft, "model", None)  # None: the oracle drafts with the target itself
        self.draft_spec = model.spec.to_dict() if model is not None else None

    def prompt(self, image, question: str) -> Prompt:
        from dream_s_edge.generation import build_prompt

        return build_prompt(self.adapter, image, question, self.config.max_context)

    def autoregressive(self, prompt: Prompt) -> GenerationResult:
        return autoregressive_generate(self.ar_target, prompt, GREEDY, self.config.max_new_tokens, self.eos,
                                       np.random.default_rng(0))

    def speculative(self, prompt: Prompt) -> GenerationResult:
        return speculative_generate(self.spec_target, self.draft, prompt, self.tree, GREEDY,
                                    self.config.max_new_tokens, self.eos, np.random.default_rng(0))

    def hf_model_dir(self) -> Path:
        return _model_dir(self.config.model or "default")


def _load(config):
    """The target, with `config.attention` or else the attention the draft needs."""
    from dream_s_edge.targets import load_target

    path = _model_dir(config.model or "default")
    return load_target(path, attn_implementation=config.attention or draft_attention(config.draft))


def draft_attention(draft: str) -> str:
    """'eager' when the draft prunes visual tokens (VTC needs the target's attention scores), else 'sdpa'."""
    from dream_s_edge.runners.draft_factory import UNTRAINED

    if draft == "oracle":
        return "sdpa"
    if draft == UNTRAINED:
        return "eager"  # the untrained preset keeps 75% of visual tokens
    import json

    spec = json.loads((Path(draft) / "config.json").read_text()).get("draft_spec", {})
    return "eager" if spec.get("visual_keep_ratio", 1.0) < 1.0 else "sdpa"


def _model_dir(model: str) -> Path:
    if model == "default":
        from dream_s_edge.embedded import ensure_default_target

        return ensure_default_target()
    return Path(model)


class _ArtifactBackend:
    """Shared by the runtime backends: the manifest, its prompt builder, tree, EOS ids and HF folder."""

    name = "artifacts"

    def _configure(self, config) -> None:
        from runtime.manifest import Manifest
        from runtime.preprocess import PromptBuilder

        if not config.artifacts:
            raise UserInputError(f"The {config.backend} backend needs an exported artifact folder.",
                                 hint="pass --artifacts DIR (written by `dream-s-edge export --out DIR`)")
        self.config = config
        self.manifest = Manifest.load(config.artifacts)
        if not self.manifest.has("draft_step"):
            raise UserInputError(f"{config.artifacts} holds no draft graph, so there is nothing speculative to time.",
                                 hint="re-export with a draft (dream-s-edge export --draft ...)")
        self.prompts = PromptBuilder(self.manifest.folder, self.manifest["processor"])
        self.tree = artifact_tree(self.manifest, config)
        self.eos = tuple(self.manifest["target"]["eos_token_ids"])
        self.draft_spec = self.manifest["draft"].get("spec")

    def prompt(self, image, question: str) -> Prompt:
        return self.prompts.build(image, question)

    def autoregressive(self, prompt: Prompt) -> GenerationResult:
        return autoregressive_generate(self.target, prompt, GREEDY, self.config.max_new_tokens, self.eos,
                                       np.random.default_rng(0))

    def speculative(self, prompt: Prompt) -> GenerationResult:
        return speculative_generate(self.target, self.draft, prompt, self.tree, GREEDY,
                                    self.config.max_new_tokens, self.eos, np.random.default_rng(0))

    def hf_model_dir(self) -> Path:
        """`--model` when given, else the folder the artifacts were exported from, else the default."""
        if self.config.model:
            return _model_dir(self.config.model)
        source = self.manifest["target"].get("source_model")
        if source and Path(source).is_dir():
            return Path(source)
        return _model_dir("default")


def artifact_tree(manifest, config) -> TreeSpec:
    """The manifest's tree; `--top-k/--depth/--node-budget` resize a dynamic one (the runners' limits still apply)."""
    from runtime.session import tree_from_manifest

    tree = tree_from_manifest(manifest["tree"])
    if config.tree_kind not in (None, tree.kind):
        raise UserInputError(f"The artifacts were exported with a {tree.kind} tree, not {config.tree_kind}.",
                             hint="drop --tree, or re-export with the tree you want")
    resized = (config.top_k, config.depth, config.node_budget, config.min_prob)
    if tree.kind == "dynamic" and any(v is not None for v in resized):
        tree = TreeSpec.dynamic(top_k=config.top_k or tree.top_k, depth=config.depth or tree.depth,
                                node_budget=config.node_budget or tree.node_budget,
                                min_prob=tree.min_prob if config.min_prob is None else config.min_prob)
    return tree


class OrtBackend(_ArtifactBackend):
    """Target and draft on onnxruntime, one runner pair (KV buffers allocated once) for both methods."""

    provider = "cpu"

    def __init__(self, config):
        from runtime.ort_draft import OrtDraftRunner
        from runtime.ort_target import OrtTargetRunner

        self._configure(config)
        threads = config.threads or None
        self.target = OrtTargetRunner(self.manifest, self.provider, threads)
        self.draft = OrtDraftRunner(self.manifest, self.target.embeddings, self.provider, threads)
        self.device = f"onnxruntime {self.provider}" + (f" ({threads} threads)" if threads else "")


@register_backend("ort-cpu")
class OrtCpuBackend(OrtBackend):
    name = "ort-cpu"
    provider = "cpu"


@register_backend("ort-cuda")
class OrtCudaBackend(OrtBackend):
    name = "ort-cuda"
    provider = "cuda"

    def __init__(self, config):
        from runtime.ort_backend import ort

        if "CUDAExecutionProvider" not in ort().get_available_providers():
            raise EngineError("onnxruntime has no CUDA execution provider here.",
                              note=f"available: {ort().get_available_providers()}",
                              hint="install onnxruntime-gpu on a machine with a CUDA GPU, or use --backend ort-cpu")
        super().__init__(config)


@register_backend("trt")
class TrtBackend(_ArtifactBackend):
    """Target and draft on TensorRT engines (`dream-s-edge build-engines --artifacts DIR` first)."""

    name = "trt"

    def __init__(self, config):
        require_tensorrt()
        from runtime.trt_runner import TrtDraftRunner, TrtTargetRunner

        self._configure(config)
        self.target = TrtTargetRunner(self.manifest, config.precision)
        self.draft = TrtDraftRunner(self.manifest, self.target.embeddings, config.precision)
        self.device = "TensorRT" + (f" {config.precision}" if config.precision else "")


def require_tensorrt() -> None:
    """Refuses, with an EngineError naming what is missing, a machine without TensorRT or a CUDA GPU."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        raise EngineError("The trt backend needs TensorRT, which is not installed here.",
                          hint="pip install 'dream-s-edge[trt]' on a machine with an NVIDIA GPU, "
                               "or use --backend ort-cpu")
    from runtime.cuda_memory import CudaApi

    try:
        api = CudaApi()
        api.device_name_and_cc(0)
    except Exception as error:  # no driver, no device, no polygraphy: the wrapper's exception types vary
        raise EngineError("The trt backend needs a CUDA GPU, and none is usable here.", note=str(error),
                          hint="run on a machine with an NVIDIA GPU, or use --backend ort-cpu") from error


class HFGenerate:
    """transformers' `generate` (greedy, sdpa attention, batch 1) on the PyTorch model: the reference.

    Args:
        model_dir: the PyTorch model folder.
        max_new_tokens: as the backend's.
        eos_ids: stop tokens (the backend's, so all methods stop alike).
    """

    def __init__(self, model_dir: Path, max_new_tokens: int, eos_ids):
        from dream_s_edge.targets import load_target

        self.model_dir = Path(model_dir)
        self.adapter = load_target(self.model_dir)
        self.max_new_tokens = max_new_tokens
        self.eos = list(eos_ids)

    def inputs(self, image, question: str) -> dict:
        """The HF processor's inputs for an image (or None) and a question."""
        return self.adapter.build_inputs(image, question)

    def generate(self, inputs: dict) -> tuple[np.ndarray, float]:
        """(new token ids [E], wall seconds) of one greedy `generate` call."""
        import time

        import torch

        inputs = {k: v.to(self.adapter.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        pad = self.eos[0] if self.eos else None
        with torch.inference_mode():
            start = time.perf_counter()
            out = self.adapter.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                              eos_token_id=self.eos or None, pad_token_id=pad)
            wall = time.perf_counter() - start
        return out[0, inputs["input_ids"].shape[1]:].cpu().numpy().astype(np.int64), wall
