"""Shrinking a trained draft's vocabulary to its most frequent tokens, without retraining.

The draft's output head is the target's frozen LM head restricted to the draft vocabulary (`d2t`),
so any subset of that vocabulary gives a working draft: the kept tokens' logits are unchanged and
only the softmax is renormalised over fewer tokens. What is lost is the chance to propose a token
left out; what is won is a smaller head matmul, log-softmax and top-k on every draft call.

Place in the data flow: `load_draft` -> `prune_vocabulary(model, counts, size)` -> export (`dream-s-edge
export --draft-vocab N`). The counts are the draft's training-data answer-token counts, which
`train` writes beside the weights (`TOKEN_COUNTS_FILE`, via `save_token_counts`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from dream_s_edge.default_draft import TOKEN_COUNTS_FILE
from dream_s_edge.draft.model import DreamDraft, build_vocab_map
from runtime.errors import ModelLoadError, SpecMismatchError

logger = logging.getLogger(__name__)


def save_token_counts(folder, counts) -> Path:
    """Writes [V] answer-token counts into a draft folder; returns the file."""
    path = Path(folder) / TOKEN_COUNTS_FILE
    np.save(path, np.asarray(torch.as_tensor(counts).cpu(), dtype=np.int64))
    return path


def load_token_counts(folder, vocab_size: int) -> np.ndarray:
    """[V] int64 answer-token counts saved with a draft.

    Raises:
        ModelLoadError: the folder has no counts, or counts for another vocabulary size.
    """
    path = Path(folder) / TOKEN_COUNTS_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"The draft folder has no {TOKEN_COUNTS_FILE}, so its tokens cannot be ranked by frequency.",
            note=f"folder={folder}",
            hint="drafts trained by this version write it; export without --draft-vocab otherwise",
        )
    counts = np.load(path)
    if counts.shape != (vocab_size,):
        raise ModelLoadError(f"{TOKEN_COUNTS_FILE} does not fit the draft's target vocabulary.",
                             note=f"shape {counts.shape}, target vocabulary {vocab_size}")
    return counts.astype(np.int64)


def prune_vocabulary(model: DreamDraft, counts, size: int) -> DreamDraft:
    """A copy of `model` whose draft vocabulary keeps its `size` most frequent tokens.

    Args:
        model: a trained draft (with or without a reduced vocabulary).
        counts: [V] answer-token counts over the target vocabulary (ties go to the lower id).
        size: V_d of the result; at most the model's current draft vocabulary.

    Returns:
        A new DreamDraft sharing the target's weights, its own weights copied, `d2t` [size] ascending.

    Raises:
        SpecMismatchError: `size` outside 1 .. the current draft vocabulary, or counts of another length.
    """
    spec = model.spec
    current = model.d2t if model.d2t is not None else torch.arange(spec.target_vocab_size)
    counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64).flatten()
    if counts.numel() != spec.target_vocab_size:
        raise SpecMismatchError("The token counts do not fit the draft's target vocabulary.",
                                note=f"{counts.numel()} counts, target vocabulary {spec.target_vocab_size}")
    if not 1 <= size <= current.numel():
        raise SpecMismatchError("A draft vocabulary can only shrink, to at least one token.",
                                note=f"asked {size}, the draft has {current.numel()} tokens",
                                hint=f"pass --draft-vocab between the tree's top_k and {current.numel()}")
    current = current.cpu()
    keep = current[build_vocab_map(counts[current], size)]  # ascending, as `current` is
    pruned = DreamDraft(dataclasses.replace(spec, draft_vocab_size=size), model.embed_weight,
                        model.lm_head_weight, keep.to(model.embed_weight.device))
    state = {**model.state_dict(), "d2t": pruned.d2t}
    pruned.load_state_dict(state, strict=True)
    kept = float(counts[keep].sum() / max(counts[current].sum(), 1.0))
    logger.info("draft vocabulary %d -> %d tokens (%.2f%% of the counted answer tokens kept)",
                current.numel(), size, 100 * kept)
    return pruned.to(dtype=model.embed_weight.dtype).train(model.training)
