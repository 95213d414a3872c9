"""Shared fixtures: the embedded default target is converted once per test session into a cache
folder that survives between runs (DREAM_S_EDGE_CACHE, default ~/.cache/dream-s-edge)."""

import importlib.util

import pytest


def pytest_collection_modifyitems(config, items):
    """Skips `gpu` tests cleanly where TensorRT or a CUDA GPU is missing."""
    has_trt = importlib.util.find_spec("tensorrt") is not None
    if has_trt:
        return
    skip = pytest.mark.skip(reason="needs TensorRT and an NVIDIA GPU (not present here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def default_target_dir():
    """The converted embedded default target (SmolLM2-135M-Instruct in an Idefics3 VLM)."""
    from dream_s_edge.embedded import ensure_default_target

    return ensure_default_target()
