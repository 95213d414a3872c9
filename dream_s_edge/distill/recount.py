"""Answer-token counts for a draft folder that has none (`dream-s-edge draft-counts`).

A draft trained by this version carries its training data's answer-token counts
(`token_counts.npy`, see `dream_s_edge/draft/vocab_prune.py`), which `export --draft-vocab` needs.
For an older draft, whose distillation data is gone, the counts can be taken again: the target's
greedy answers to the same training prompt mix, decoded by the torch-free runtime over an exported
folder of that target (autoregressive, so only the target's own tokens are counted).

Place in the data flow: artifact folder + `training_prompts(...)` -> `count_answer_tokens` -> [V] counts
-> `save_token_counts(DRAFT_DIR, counts)`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dream_s_edge.distill.prompts import PromptSpec, materialize
from runtime.session import Session

logger = logging.getLogger(__name__)


def count_answer_tokens(artifacts: str | Path, specs: Sequence[PromptSpec], max_new_tokens: int = 64,
                        progress: bool = True) -> np.ndarray:
    """[V] int64: how often each target token occurs in the target's greedy answers to `specs`.

    Args:
        artifacts: a folder written by `dream-s-edge export` (its draft, if any, is not used).
        specs: the prompts (`dream_s_edge.distill.prompts.training_prompts`).
        max_new_tokens: the answer length cap (the distillation data's is 64).
        progress: show a progress bar.
    """
    session = Session.from_dir(artifacts, speculative=False)
    counts = np.zeros(int(session.manifest["target"]["vocab_size"]), dtype=np.int64)
    for spec in tqdm(specs, desc="counting answer tokens", unit="prompt", disable=not progress):
        image, question = materialize(spec)
        result = session.generate(image, question, max_new_tokens=max_new_tokens)
        np.add.at(counts, result.tokens, 1)
    logger.info("%d answer tokens, %d distinct, over %d prompts", counts.sum(), (counts > 0).sum(), len(specs))
    return counts
