"""Visual token compression: the most-attended visual tokens and every text token are kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dream_s_edge.draft.vtc import num_kept, select_kept
from runtime.errors import SpecMismatchError

#                  text  v    v    v    v    text v    v    v    text
SCORES = np.array([9.0, 0.1, 0.9, 0.5, 0.3, 0.0, 0.8, 0.2, 0.7, 5.0], dtype=np.float32)
VISUAL = np.array([0, 1, 1, 1, 1, 0, 1, 1, 1, 0], dtype=bool)


def test_keeps_most_attended_visual_and_all_text():
    kept = select_kept(SCORES, VISUAL, 0.5)  # 7 visual -> ceil(3.5) = 4: scores .9 .8 .7 .5
    assert kept.tolist() == [0, 2, 3, 5, 6, 8, 9]
    assert kept.dtype == torch.int64


def test_ratio_one_keeps_everything():
    assert select_kept(SCORES, VISUAL, 1.0).tolist() == list(range(10))


def test_text_only_prompt_keeps_everything():
    assert select_kept(SCORES, np.zeros(10, dtype=bool), 0.25).tolist() == list(range(10))


def test_small_ratio_keeps_at_least_one_and_ties_go_early():
    scores = np.ones(10, dtype=np.float32)
    assert select_kept(scores, VISUAL, 0.01).tolist() == [0, 1, 5, 9]
    assert num_kept(7, 0.75) == 6 and num_kept(4, 0.75) == 3 and num_kept(0, 0.5) == 0


def test_accepts_tensors_and_refuses_bad_input():
    kept = select_kept(torch.as_tensor(SCORES), torch.as_tensor(VISUAL), 0.5)
    assert kept.tolist() == [0, 2, 3, 5, 6, 8, 9]
    with pytest.raises(SpecMismatchError):
        select_kept(SCORES[:5], VISUAL, 0.5)
    with pytest.raises(SpecMismatchError):
        select_kept(SCORES, VISUAL, 0.0)
