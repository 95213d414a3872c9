"""Shared fixtures: the embedded default target is converted once per test session into a cache
folder that survives between runs (DREAM_S_EDGE_CACHE, default ~/.cache/dream-s-edge)."""

import importlib.util

import numpy as np
import pytest
from PIL import Image
from tiny_vlms import save_tiny_vlm


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


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """Family -> a saved tiny model folder, built once per session on first use."""
    built = {}

    def get(family: str):
        if family not in built:
            built[family] = save_tiny_vlm(family, tmp_path_factory.mktemp(family))
        return built[family]

    return get


@pytest.fixture(scope="session")
def targets(model_dirs):
    """(family, attn_implementation) -> a loaded adapter, cached for the session."""
    loaded = {}

    def get(family: str, attn: str = "sdpa"):
        if (family, attn) not in loaded:
            from dream_s_edge.targets import load_target

            loaded[(family, attn)] = load_target(model_dirs(family), attn_implementation=attn)
        return loaded[(family, attn)]

    return get


@pytest.fixture(scope="session")
def image():
    """A 40x30 random RGB image (not square, so aspect-ratio paths run)."""
    pixels = np.random.RandomState(0).randint(0, 255, (40, 30, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def default_adapter(default_target_dir):
    """The embedded default target, loaded once per session (fp32, sdpa attention)."""
    from dream_s_edge.targets import load_target

    return load_target(default_target_dir)


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory, image):
    """A bench prompts file (JSON lines): one question about `image`, one text-only question."""
    import json

    folder = tmp_path_factory.mktemp("prompts")
    picture = folder / "picture.png"
    image.save(picture)
    path = folder / "prompts.jsonl"
    lines = [{"image": str(picture), "question": "What is in the picture?"},
             {"image": None, "question": "Describe it in one line."}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
