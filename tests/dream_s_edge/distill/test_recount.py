"""Recounting a draft's answer tokens with the torch-free runtime (`dream-s-edge draft-counts`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dream_s_edge.cli import EXIT_USER_ERROR, main
from dream_s_edge.distill.prompts import materialize, training_prompts
from dream_s_edge.distill.recount import count_answer_tokens
from dream_s_edge.draft.vocab_prune import load_token_counts
from runtime.session import Session


@pytest.fixture(scope="module")
def exported_target(tmp_path_factory, model_dirs):
    """(folder, None): the tiny SmolVLM target exported alone, with room for a chat-template prompt."""
    from dream_s_edge.targets import load_target
    from export.pipeline import ExportConfig, export_artifacts

    adapter = load_target(model_dirs("smolvlm"), attn_implementation="eager")
    out = tmp_path_factory.mktemp("target-only")
    export_artifacts(ExportConfig(out=out, max_context=160, draft=None, parity=False), adapter=adapter)
    return out, None


def test_counts_are_the_greedy_answers_tokens(exported_target):
    folder, _ = exported_target
    specs = training_prompts(1, 0, 2, seed=0)
    counts = count_answer_tokens(folder, specs, max_new_tokens=6, progress=False)
    session = Session.from_dir(folder, speculative=False)
    expected = np.zeros_like(counts)
    for spec in specs:
        image, question = materialize(spec)
        np.add.at(expected, session.generate(image, question, max_new_tokens=6).tokens, 1)
    assert counts.sum() > 0 and np.array_equal(counts, expected)


def test_cli_writes_counts_into_the_draft_folder(exported_target, tmp_path, capsys):
    folder, _ = exported_target
    vocab = json.loads((folder / "manifest.json").read_text())["target"]["vocab_size"]
    (tmp_path / "config.json").write_text(json.dumps({"draft_spec": {"target_vocab_size": vocab}}))
    args = ["draft-counts", "--draft", str(tmp_path), "--artifacts", str(folder), "--num-scene", "1",
            "--num-photo", "0", "--num-text", "2", "--max-new-tokens", "4"]
    assert main(args) == 0
    counts = load_token_counts(tmp_path, vocab)
    assert f"{int(counts.sum())} answer tokens" in capsys.readouterr().out


def test_cli_refuses_a_draft_of_another_target(exported_target, tmp_path, capsys):
    folder, _ = exported_target
    (tmp_path / "config.json").write_text(json.dumps({"draft_spec": {"target_vocab_size": 7}}))
    assert main(["draft-counts", "--draft", str(tmp_path), "--artifacts", str(folder)]) == EXIT_USER_ERROR
    assert "another target" in capsys.readouterr().err
    assert not (tmp_path / "token_counts.npy").exists()
