"""Fixtures of the distillation tests: the tiny random SmolVLM-style target folder (the session's
`model_dirs` fixture, tests/tiny_vlms.py) and one-thread torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors on a shared CPU: one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_target_dir(model_dirs) -> Path:
    """A saved tiny random SmolVLM (Idefics3) folder: hidden 64, 2 layers, 4 visual tokens."""
    return Path(model_dirs("smolvlm"))


TINY_DATA = dict(num_scene=3, num_photo=2, num_text=3, max_new_tokens=10, shard_size=3,
                 num_heldout_scene=2, num_heldout_photo=1)


@pytest.fixture(scope="session")
def tiny_data_settings() -> dict:
    """TINY_DATA as a fixture: a test module's `from conftest import ...` would pick whichever conftest
    pytest imported last when several test folders run together."""
    return dict(TINY_DATA)


@pytest.fixture(scope="session")
def tiny_data_dir(tiny_target_dir, tmp_path_factory) -> Path:
    """Distillation data of the tiny target: 8 sequences in 3 shards, 3 held-out prompts."""
    from dream_s_edge.distill import DistillDataConfig, build_distill_data

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = build_distill_data(DistillDataConfig(out_dir=str(tmp_path_factory.mktemp("distill-data")),
                                                  model=str(tiny_target_dir), **TINY_DATA))
    torch.set_num_threads(before)
    return folder


@pytest.fixture(scope="session")
def tiny_supernet_data_dir(tiny_target_dir, tmp_path_factory) -> Path:
    """TINY_DATA plus the tiny target's hidden state 1 (both layers are injection candidates)."""
    from dream_s_edge.distill import DistillDataConfig, build_distill_data

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = build_distill_data(DistillDataConfig(out_dir=str(tmp_path_factory.mktemp("supernet-data")),
                                                  model=str(tiny_target_dir), extra_layers=(1,), **TINY_DATA))
    torch.set_num_threads(before)
    return folder
