"""Builds draft runners for a target: a saved DREAM draft, or a fresh (untrained) one.

The draft shares the target's token embedding and LM head (frozen), so it is always built from the
loaded target adapter; a draft saved for another target is refused with both values named.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dream_s_edge.draft.checkpoint import load_draft
from dream_s_edge.draft.model import DreamDraft
from dream_s_edge.draft.spec import DraftSpec, TargetDims
from dream_s_edge.runners.draft_torch import TorchDraftRunner
from dream_s_edge.targets import TargetAdapter
from runtime.tree import TreeSpec

UNTRAINED = "untrained"


def target_dims(adapter: TargetAdapter) -> TargetDims:
    """The numbers a draft must agree with, read from the target's spec and config."""
    spec = adapter.spec
    text = adapter.language_model.config
    return TargetDims(
        hidden_size=spec.hidden_size,
        vocab_size=spec.vocab_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        intermediate_size=getattr(text, "intermediate_size", None),
        rope_theta=float(_rope_theta(text)),
        rms_norm_eps=float(getattr(text, "rms_norm_eps", 1e-5)),
    )


def _rope_theta(text_config) -> float:
    """The rope base, from transformers 5's `rope_parameters` or the older `rope_theta`."""
    params = getattr(text_config, "rope_parameters", None) or {}
    return params.get("rope_theta", getattr(text_config, "rope_theta", 10000.0))


def untrained_draft(adapter: TargetAdapter, preset: str = "dream-default", seed: int = 0) -> DreamDraft:
    """A freshly initialised draft of a named preset, sized for the target."""
    torch.manual_seed(seed)
    spec = DraftSpec.from_name(preset, target_dims(adapter))
    return DreamDraft(spec, adapter.text_embedding().weight, adapter.lm_head_weight()).to(adapter.dtype)


def load_draft_model(adapter: TargetAdapter, draft: str | Path) -> DreamDraft:
    """`draft` is 'untrained' or a folder written by `save_draft`."""
    if str(draft) == UNTRAINED:
        return untrained_draft(adapter)
    model = load_draft(Path(draft), adapter.text_embedding().weight, adapter.lm_head_weight())
    return model.to(adapter.dtype)


def draft_runner(adapter: TargetAdapter, model: DreamDraft, max_context: int, tree: TreeSpec) -> TorchDraftRunner:
    """Wraps a draft in a runner whose scratch area fits `tree`."""
    return TorchDraftRunner(
        model,
        target_dims(adapter),
        max_context=max_context,
        scratch_slots=max(tree.scratch_slots, 1),
        max_depth=max(tree.depth, 1),
    )
