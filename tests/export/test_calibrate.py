"""Calibrating an exported folder: decoding, the fit written into its manifest, the report and plot, and the
runtime reading it back with its greedy answers unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export.calibrate import PLOT_NAME, REPORT_NAME, CalibrateConfig, calibrate_folder
from export.manifest import update_manifest
from runtime.errors import ManifestError, SpecMismatchError, UserInputError
from runtime.manifest import Manifest
from runtime.session import Session
from runtime.tree_calibration import TreeCalibration

QUESTIONS = ["What is in the picture?", "Describe it in one line.", "What colour is it?", "hi"]


@pytest.fixture()
def copy(exported_copy):
    return exported_copy


def _prompts(image, count: int = 8) -> list[tuple[object, str]]:
    return [(image if i % 2 == 0 else None, QUESTIONS[i % len(QUESTIONS)]) for i in range(count)]


def test_calibration_is_written_read_back_and_keeps_greedy_answers(copy, image) -> None:
    before = json.loads((copy / "manifest.json").read_text())
    report = calibrate_folder(CalibrateConfig(artifacts=copy, max_new_tokens=12, threads=1), _prompts(image))
    manifest = Manifest.load(copy)  # sha256 of every file still holds
    assert manifest["draft"]["calibration"] == report["calibration"]
    assert {k: v for k, v in manifest["draft"].items() if k != "calibration"} == before["draft"]
    assert manifest["files"] == before["files"] and manifest["tree"] == before["tree"]
    assert report["samples"] == manifest["draft"]["calibration"]["samples"] > 0 and report["prompts"] == 8
    assert np.isfinite([report["log_loss"]["raw"], report["log_loss"]["calibrated"]]).all()
    assert json.loads((copy / REPORT_NAME).read_text()) == report and (copy / PLOT_NAME).stat().st_size > 0

    session = Session.from_dir(copy, threads=1)
    assert session.draft.calibration == TreeCalibration.from_dict(report["calibration"])
    for picture, question in _prompts(image, 4):
        speculative = session.generate(picture, question, max_new_tokens=12)
        autoregressive = session.generate(picture, question, max_new_tokens=12, speculative=False)
        np.testing.assert_array_equal(speculative.tokens, autoregressive.tokens)


def test_calibrating_again_starts_from_the_raw_probabilities(copy, image) -> None:
    config = CalibrateConfig(artifacts=copy, max_new_tokens=8, threads=1, plot=False)
    first = calibrate_folder(config, _prompts(image, 4))
    second = calibrate_folder(config, _prompts(image, 4))
    assert second["samples"] == first["samples"] and second["calibration"] == first["calibration"]


def test_a_folder_without_a_draft_or_prompts_is_refused(copy, image) -> None:
    config = CalibrateConfig(artifacts=copy, max_new_tokens=4, threads=1)
    with pytest.raises(UserInputError, match="needs prompts"):
        calibrate_folder(config, [])
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("draft")}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SpecMismatchError, match="no draft"):
        calibrate_folder(config, _prompts(image, 2))


def test_update_manifest_names_a_missing_section(copy) -> None:
    with pytest.raises(ManifestError, match="'nowhere'"):
        update_manifest(copy, {"nowhere": {"x": 1}})
    update_manifest(copy, {"limits": {"note": "kept"}})
    assert Manifest.load(copy)["limits"]["note"] == "kept"
