"""Fixtures for the export and ORT runtime tests (imported by their conftest.py files): a tiny SmolVLM exported once (with a draft).

The tiny target comes from tests/tiny_vlms.py (the same builder the target tests use); the export
runs with eager attention, a 64-token context and a small dynamic tree.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_tree():
    from runtime.tree import TreeSpec

    return TreeSpec.dynamic(top_k=3, depth=4, node_budget=10)


@pytest.fixture(scope="session")
def exported_tiny(tmp_path_factory, model_dirs, tiny_tree):
    """(artifact folder, adapter) of the tiny SmolVLM exported with an untrained DREAM draft."""
    import torch

    from dream_s_edge.targets import load_target
    from export.pipeline import ExportConfig, export_artifacts

    torch.set_num_threads(1)
    adapter = load_target(model_dirs("smolvlm"), attn_implementation="eager")
    out = tmp_path_factory.mktemp("artifacts")
    export_artifacts(ExportConfig(out=out, max_context=64, draft="untrained", tree=tiny_tree), adapter=adapter)
    return out, adapter


@pytest.fixture()
def exported_copy(exported_tiny, tmp_path):
    """A writable copy of the tiny export, for tests that edit its manifest (the session's folder stays as it is)."""
    import shutil

    folder, _ = exported_tiny
    shutil.copytree(folder, tmp_path / "copy")
    return tmp_path / "copy"
