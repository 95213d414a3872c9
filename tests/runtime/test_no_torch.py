"""The runtime imports without torch or transformers (it must run on a bare onnxruntime box)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import runtime

MODULES = sorted(f"runtime.{m.name}" for m in pkgutil.iter_modules(runtime.__path__))


def test_runtime_modules_found() -> None:
    assert {"runtime.tree", "runtime.accept", "runtime.kv_cache", "runtime.decode", "runtime.metrics"} <= set(
        MODULES
    )


def test_runtime_imports_without_torch() -> None:
    code = (
        "import sys, importlib\n"
        f"for name in {['runtime', *MODULES]!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    root = Path(runtime.__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_ort_runtime_modules_are_checked() -> None:
    assert {"runtime.manifest", "runtime.ort_backend", "runtime.ort_target", "runtime.ort_draft",
            "runtime.preprocess", "runtime.session"} <= set(MODULES)


def test_ask_runs_without_torch(exported_tiny, tmp_path) -> None:
    """`dream-s-edge ask` answers from exported artifacts and never imports torch or transformers."""
    from PIL import Image

    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.RandomState(1).randint(0, 255, (30, 40, 3), dtype=np.uint8)).save(picture)
    code = (
        "import sys\n"
        "from dream_s_edge.cli import main\n"
        f"rc = main(['ask', '--artifacts', {str(exported_tiny[0])!r}, '--image', {str(picture)!r},"
        " '--max-new-tokens', '6', 'What is it?'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert rc == 0 and not bad, (rc, bad)\n"
    )
    root = Path(runtime.__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stderr
