"""Tests for dream_s_edge/runners/draft_factory.py: drafts are refused for the wrong target."""

import pytest

from dream_s_edge.draft.checkpoint import save_draft
from dream_s_edge.runners.draft_factory import load_draft_model, untrained_draft
from runtime.errors import SpecMismatchError


def test_saved_draft_round_trips_and_is_refused_by_another_target(targets, tmp_path):
    smol, qwen = targets("smolvlm"), targets("qwen2_vl")
    model = untrained_draft(smol)
    folder = save_draft(tmp_path / "draft", model, model.spec, target_name="tiny-smolvlm")
    again = load_draft_model(smol, folder)
    assert again.spec == model.spec
    with pytest.raises(SpecMismatchError) as info:
        load_draft_model(qwen, folder)
    message = str(info.value)
    assert str(smol.spec.vocab_size) in message and str(qwen.spec.vocab_size) in message
