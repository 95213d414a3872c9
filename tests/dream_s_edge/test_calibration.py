"""`dream-s-edge calibrate` (dream_s_edge/calibration.py) on the tiny export: prompts from a file or drawn
from the distillation mix, the manifest updated, the summary printed, bad flags and folders refused."""

from __future__ import annotations

import ort_artifacts
import pytest

from dream_s_edge.calibration import CalibrationRun, calibration_inputs
from dream_s_edge.cli import EXIT_USER_ERROR, main
from runtime.manifest import Manifest

exported_tiny, tiny_tree, exported_copy = ort_artifacts.exported_tiny, ort_artifacts.tiny_tree, ort_artifacts.exported_copy


@pytest.fixture()
def copy(exported_copy):
    return exported_copy


def test_inputs_come_from_the_file_or_the_distillation_mix(prompts_file, tmp_path) -> None:
    from_file = calibration_inputs(CalibrationRun(artifacts=tmp_path, prompts_file=prompts_file, count=1))
    assert from_file == [(from_file[0][0], "What is in the picture?")] and from_file[0][0].endswith("picture.png")
    drawn = calibration_inputs(CalibrationRun(artifacts=tmp_path, count=8))
    assert len(drawn) == 8 and all(isinstance(q, str) and q for _, q in drawn)
    assert sum(image is None for image, _ in drawn) == 1  # one text-only instruction in eight


def test_cli_calibrates_a_folder(copy, prompts_file, capsys) -> None:
    code = main(["calibrate", "--artifacts", str(copy), "--prompts", str(prompts_file), "--max-new-tokens", "8",
                 "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tested" in out and "log-loss" in out and "draft.calibration" in out
    assert Manifest.load(copy)["draft"]["calibration"]["samples"] > 0
    assert (copy / "calibration.png").is_file()


def test_cli_refuses_no_prompts_and_a_folder_without_a_manifest(tmp_path, copy, capsys) -> None:
    assert main(["calibrate", "--artifacts", str(copy), "--count", "0"]) == EXIT_USER_ERROR
    assert "--count must be at least 1" in capsys.readouterr().err
    assert main(["calibrate", "--artifacts", str(tmp_path / "nothing")]) == EXIT_USER_ERROR
    assert "manifest" in capsys.readouterr().err.lower()
