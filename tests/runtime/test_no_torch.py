"""The runtime imports without torch or transformers (it must run on a bare onnxruntime box)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

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
