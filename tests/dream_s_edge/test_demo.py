"""`dream-s-edge demo` (dream_s_edge/demo.py) on the tiny fixtures: the export cache key, the export
made once and reused, the missing-draft warning, and the runtime part: the speculative answer streamed,
the same prompt decoded autoregressively on the same session, τ and the speedup printed, and the two
greedy texts identical. No timing assertions (a shared CPU)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import ort_artifacts
import pytest

from dream_s_edge import demo
from dream_s_edge.cli import EXIT_USER_ERROR, main
from dream_s_edge.default_draft import DRAFT_FILES, TOKEN_COUNTS_FILE
from dream_s_edge.demo import DemoArtifacts, DemoConfig, DemoExportSettings, answer_and_compare, export_key
from runtime.errors import ImageError, PromptError, UserInputError
from runtime.tree import TreeSpec

# the tiny SmolVLM exported once per session with an untrained draft (fixtures shared with the ORT tests)
exported_tiny, tiny_tree = ort_artifacts.exported_tiny, ort_artifacts.tiny_tree


@pytest.fixture(scope="module")
def picture(tmp_path_factory, image):
    path = tmp_path_factory.mktemp("demo") / "picture.png"
    image.save(path)
    return path


def _draft(folder, weights: bytes, counts: bytes = b"counts"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DRAFT_FILES[0]).write_text("{}")
    (folder / DRAFT_FILES[1]).write_bytes(weights)
    (folder / TOKEN_COUNTS_FILE).write_bytes(counts)
    return folder


def test_export_key_covers_target_draft_version_and_settings(tmp_path) -> None:
    settings = DemoExportSettings()
    draft = _draft(tmp_path / "a", b"weights")
    key = export_key("default-target-abc", draft, settings, version="1.0")
    assert key == export_key(tmp_path / "elsewhere" / "default-target-abc", _draft(tmp_path / "b", b"weights"),
                             settings, version="1.0")  # the folder name and the bytes, not the paths
    others = {
        export_key("default-target-xyz", draft, settings, version="1.0"),
        export_key("default-target-abc", _draft(tmp_path / "c", b"weightz"), settings, version="1.0"),
        export_key("default-target-abc", draft, settings, version="1.1"),
        export_key("default-target-abc", draft, DemoExportSettings(max_context=512), version="1.0"),
        export_key("default-target-abc", draft, DemoExportSettings(tree=TreeSpec.dynamic(4, 6, 32)), version="1.0"),
        export_key("default-target-abc", draft, DemoExportSettings(draft_weights="int8"), version="1.0"),
        export_key("default-target-abc", None, settings, version="1.0"),
        export_key("default-target-abc", draft, DemoExportSettings(draft_vocab=2048), version="1.0"),
        export_key("default-target-abc", _draft(tmp_path / "d", b"weights", b"other"), settings, version="1.0"),
        export_key("default-target-abc", draft, DemoExportSettings(calibration_prompts=0), version="1.0"),
    }
    assert key not in others and len(others) == 10
    assert key == export_key("default-target-abc", draft, DemoExportSettings(parity=False), version="1.0")
    unpruned = DemoExportSettings(draft_vocab=None)  # then the counts do not matter
    assert export_key("default-target-abc", draft, unpruned, version="1.0") == export_key(
        "default-target-abc", _draft(tmp_path / "e", b"weights", b"other"), unpruned, version="1.0")


def test_export_once_then_reuse_and_warn_without_a_shipped_draft(model_dirs, tmp_path, monkeypatch, caplog) -> None:
    import dream_s_edge.embedded
    import export.pipeline

    monkeypatch.setenv("DREAM_S_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dream_s_edge.embedded, "ensure_default_target", lambda: model_dirs("smolvlm"))
    monkeypatch.setattr(demo, "default_draft_dir", lambda: None)
    settings = DemoExportSettings(max_context=64, tree=TreeSpec.dynamic(top_k=3, depth=4, node_budget=10),
                                  parity=False)
    announced = []
    with caplog.at_level(logging.WARNING, logger="dream_s_edge.demo"):
        first = demo.demo_artifacts(settings, on_export=announced.append)
    assert "ships no trained default draft" in caplog.text
    assert first.exported and not first.shipped_draft and first.draft == "untrained"
    assert announced == [first.folder] and (first.folder / "manifest.json").is_file()
    assert first.folder.parent == tmp_path / "cache" and first.folder.name.startswith(demo.CACHE_PREFIX)
    assert not list(first.folder.parent.glob(".exporting-*"))

    def refuse(*args, **kwargs):
        raise AssertionError("exported twice")

    monkeypatch.setattr(export.pipeline, "export_artifacts", refuse)
    again = demo.demo_artifacts(settings, on_export=announced.append)
    assert again.folder == first.folder and not again.exported and announced == [first.folder]


def test_answer_and_compare_on_the_tiny_export(exported_tiny, picture) -> None:
    folder, _ = exported_tiny
    pieces = []
    report = answer_and_compare(folder, demo.open_image(str(picture)), "What is in the picture?", max_new_tokens=8,
                                threads=1, warmup_tokens=2, write=pieces.append)
    assert report.text == "".join(pieces) == report.autoregressive_text
    assert report.identical and np.array_equal(report.speculative.tokens, report.autoregressive.tokens)
    assert report.speculative.metrics.target_passes >= 1 and report.tau >= 1.0
    assert report.speedup == pytest.approx(report.speculative.metrics.tokens_per_s
                                           / report.autoregressive.metrics.tokens_per_s)
    assert set(report.to_dict()) >= {"tau", "speedup", "identical", "speculative", "autoregressive"}
    assert len(report.speculative_runs) == len(report.autoregressive_runs) == 3  # the default repeats
    assert report.speculative_runs[0] is not report.speculative_runs[1]
    rates = sorted(run.metrics.tokens_per_s for run in report.autoregressive_runs)
    assert report.autoregressive.metrics.tokens_per_s == rates[1]  # the median run
    assert report.to_dict()["runs_tokens_per_s"]["speculative"] == [
        run.metrics.tokens_per_s for run in report.speculative_runs]


def test_answer_and_compare_once_per_method(exported_tiny, picture) -> None:
    folder, _ = exported_tiny
    report = answer_and_compare(folder, demo.open_image(str(picture)), "What is it?", max_new_tokens=4,
                                threads=1, warmup_tokens=0, repeats=1)
    assert report.speculative_runs == (report.speculative,) and report.autoregressive_runs == (report.autoregressive,)
    assert report.identical
    with pytest.raises(UserInputError, match="--repeats must be at least 1"):
        answer_and_compare(folder, None, "What is it?", repeats=0)


def test_demo_command_prints_tau_and_speedup(exported_tiny, picture, monkeypatch, capsys) -> None:
    folder, _ = exported_tiny
    monkeypatch.setattr(demo, "demo_artifacts",
                        lambda settings, on_export=None: DemoArtifacts(folder=folder, draft="untrained", exported=False))
    code = main(["demo", "--image", str(picture), "--max-new-tokens", "8", "--threads", "1", "What is it?"])
    assert code == 0
    captured = capsys.readouterr()
    out = captured.out
    assert out.startswith("Q: What is it?\nA: ")
    lines = out.splitlines()
    spec = next(line for line in lines if line.startswith("speculative"))
    assert "tau " in spec and "tokens/s" in spec and "an untrained draft" in spec
    plain = next(line for line in lines if line.startswith("autoregressive"))
    assert "tokens/s" in plain and plain.endswith("medians of 3 alternating runs each")
    speedup = next(line for line in lines if line.startswith("speedup: "))
    assert "x over autoregressive decoding" in speedup and speedup.endswith("identical: yes")
    assert f"artifacts: {folder} (cached)" in out
    assert "no trained default draft ships" in captured.err


def test_bad_input_is_refused_before_the_export(picture, tmp_path, monkeypatch, capsys) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("exported for bad input")

    monkeypatch.setattr(demo, "demo_artifacts", refuse)
    with pytest.raises(PromptError):
        demo.run_demo(DemoConfig(question="  ", image=str(picture)))
    with pytest.raises(ImageError):
        demo.run_demo(DemoConfig(image=str(tmp_path / "missing.png")))
    with pytest.raises(UserInputError, match="--repeats"):
        demo.run_demo(DemoConfig(image=str(picture), repeats=0))
    assert main(["demo", "--image", "example:nope"]) == EXIT_USER_ERROR
    assert "Unknown example image" in capsys.readouterr().err


def test_cached_demo_answers_without_torch(exported_tiny, model_dirs, picture, tmp_path) -> None:
    """Once the export is cached, the demo's whole path (cache lookup, session, both decodes) runs
    without importing torch or transformers."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import dream_s_edge.embedded, dream_s_edge.cli\n"
        "from dream_s_edge import demo\n"
        "from runtime.tree import TreeSpec\n"
        "root, target, exported, picture = map(Path, sys.argv[1:])\n"
        "settings = demo.DemoExportSettings(max_context=64, tree=TreeSpec.dynamic(top_k=3, depth=4, node_budget=10))\n"
        "(root / (demo.CACHE_PREFIX + demo.export_key(target, None, settings))).symlink_to(exported)\n"
        "art = demo.cached_export(target, None, settings, root)\n"
        "assert not art.exported, art\n"
        "report = demo.answer_and_compare(art.folder, demo.open_image(str(picture)), 'What is it?', max_new_tokens=4,\n"
        "                                 threads=1, warmup_tokens=1)\n"
        "assert report.identical\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    root = Path(demo.__file__).resolve().parent.parent
    args = [str(tmp_path), str(model_dirs("smolvlm")), str(exported_tiny[0]), str(picture)]
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
