"""The draft a training run starts from: `build_draft` (fresh, seeded, with the data's draft
vocabulary) and `warm_start` (a finished draft's weights, `train --init-from`).

A warm start keeps the finished draft's own vocabulary map (`start_vocabulary`), so it may continue
on other distillation data (another --seed) whose most frequent answer tokens differ; its token
counts are added to the new data's (`start_token_counts`).

Place in the data flow: `distill/trainer.py`'s `DraftStrategy` builds its draft here before the loop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dream_s_edge.default_draft import TOKEN_COUNTS_FILE
from dream_s_edge.distill.dataset import DistillDataset, answer_token_counts
from dream_s_edge.draft.checkpoint import load_draft, saved_vocab_map
from dream_s_edge.draft.model import DreamDraft, build_vocab_map
from dream_s_edge.draft.spec import DraftSpec
from dream_s_edge.draft.vocab_prune import load_token_counts
from dream_s_edge.runners.draft_factory import target_dims
from runtime.errors import TrainingError

if TYPE_CHECKING:
    from dream_s_edge.distill.trainer import TrainConfig
    from dream_s_edge.targets import TargetAdapter

logger = logging.getLogger(__name__)


def build_draft(adapter: TargetAdapter, config: TrainConfig, data: DistillDataset,
                token_counts: torch.Tensor | None = None, d2t: torch.Tensor | None = None) -> DreamDraft:
    """A fresh draft of the configured preset, identical on every process (seeded); with a reduced
    vocabulary, it keeps `d2t` [V_d] when given (a warm start's), else the data's most frequent answer
    tokens (`token_counts` [V], counted from `data` when None)."""
    overrides = {"visual_keep_ratio": config.visual_keep_ratio, "draft_vocab_size": config.draft_vocab_size,
                 "interaction": config.interaction, "feature_layers": config.feature_layers}
    spec = DraftSpec.from_name(
        config.preset, target_dims(adapter), **{k: v for k, v in overrides.items() if v is not None}
    )
    if spec.draft_vocab_size is None:
        d2t = None
    elif d2t is None or d2t.numel() != spec.draft_vocab_size:  # another size: warm_start names the spec
        if token_counts is None:
            token_counts = answer_token_counts(data, spec.target_vocab_size)
        d2t = build_vocab_map(token_counts, spec.draft_vocab_size)
    torch.manual_seed(config.seed)
    draft = DreamDraft(spec, adapter.text_embedding().weight.float(), adapter.lm_head_weight().float(), d2t)
    return draft.to(adapter.device)


def warm_start(draft: DreamDraft, folder: str) -> None:
    """Loads a trained draft's weights into `draft` (built by `build_draft`), refusing another spec.

    Raises:
        TrainingError: the saved draft's spec or vocabulary map differs from the run's draft.
    """
    saved = load_draft(folder, draft.embed_weight, draft.lm_head_weight)
    if saved.spec != draft.spec:
        raise TrainingError("The --init-from draft has another architecture than this run builds.",
                            note=f"saved {saved.spec.to_dict()}\nrun   {draft.spec.to_dict()}",
                            hint="pass the preset and overrides (--preset, --draft-vocab, ...) it was trained with")
    if (saved.d2t is None) != (draft.d2t is None) or (saved.d2t is not None and not torch.equal(saved.d2t, draft.d2t)):
        raise TrainingError("The --init-from draft has another draft vocabulary than this run's draft.",
                            hint="build the run's draft with start_vocabulary(folder)")
    draft.load_state_dict(saved.state_dict())
    logger.info("warm start from %s", folder)


def start_vocabulary(folder: str | None) -> torch.Tensor | None:
    """The vocabulary map [V_d] a warm start keeps (None: no warm start, or a full-vocabulary draft)."""
    return None if folder is None else saved_vocab_map(folder)


def start_token_counts(folder: str | None, counts: torch.Tensor) -> torch.Tensor:
    """The data's answer-token counts [V] plus those saved with the warm start's draft, if any."""
    if folder is None or not (Path(folder) / TOKEN_COUNTS_FILE).is_file():
        return counts
    return counts + torch.from_numpy(load_token_counts(folder, counts.numel())).to(counts.dtype)
