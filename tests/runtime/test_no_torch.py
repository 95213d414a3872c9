"""The runtime imports without torch or transformers (it must run on a bare onnxruntime box)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import runtime

# Subpackages too (runtime.camera.*); walk_packages imports each package to list its modules.
MODULES = sorted(m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime."))


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


def test_camera_modules_are_checked() -> None:
    assert {"runtime.camera.app", "runtime.camera.server", "runtime.camera.sources", "runtime.camera.questions",
            "runtime.camera.soak"} <= set(MODULES)


def test_camera_runs_without_torch(exported_tiny, tmp_path) -> None:
    """`dream-s-edge camera` serves the page, answers a question, and never imports torch or transformers."""
    import socket

    import pytest

    pytest.importorskip("cv2", reason="the camera extra is not installed")
    from runtime.camera.synthetic import write_test_video

    video = write_test_video(tmp_path / "door.avi", frames=10)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "import json, os, sys, threading, time, urllib.request\n"
        "from dream_s_edge.cli import main\n"
        f"argv = ['camera', '--artifacts', {str(exported_tiny[0])!r}, '--source', {str(video)!r},"
        f" '--port', '{port}', '--threads', '1', '--max-new-tokens', '4']\n"
        "threading.Thread(target=main, args=(argv,), daemon=True).start()\n"
        f"base = 'http://127.0.0.1:{port}'\n"
        "for _ in range(600):\n"
        "    try:\n"
        "        if json.load(urllib.request.urlopen(base + '/status'))['source']['frames']: break\n"
        "    except OSError: pass\n"
        "    time.sleep(0.1)\n"
        "request = urllib.request.Request(base + '/ask', data=json.dumps({'question': 'Who is there?'}).encode(),"
        " headers={'Content-Type': 'application/json'})\n"
        "job = json.load(urllib.request.urlopen(request))['id']\n"
        "events = urllib.request.urlopen(base + '/answers/' + job + '/events', timeout=120).read().decode()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert 'event: done' in events and not bad, (events, bad)\n"
        "sys.stdout.flush(); os._exit(0)\n"
    )
    root = Path(runtime.__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "camera page" in proc.stderr
