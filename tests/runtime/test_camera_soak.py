"""A short soak of the camera app (the issue's 1,000-question run is scripts/soak_camera.py): consecutive
questions on one session through the app's queue, a JSON report with memory growth and failures."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("cv2", reason="the camera extra (opencv-python-headless) is not installed")

from runtime.camera.soak import SoakConfig, rss_bytes, run_soak  # noqa: E402
from runtime.camera.synthetic import write_test_video  # noqa: E402
from runtime.errors import UserInputError  # noqa: E402


def test_short_soak_reports_flat_memory_and_no_failures(exported_tiny, tmp_path):
    video = write_test_video(tmp_path / "door.avi", frames=10)
    out = tmp_path / "soak.json"
    report = run_soak(SoakConfig(artifacts=exported_tiny[0], source=str(video), out=out, questions=60, warmup=10,
                                 sample_every=10, max_new_tokens=6))
    assert json.loads(out.read_text()) == report
    assert report["failures"] == 0 and report["failure_examples"] == []
    assert len(report["rss_samples"]) == 6 and report["rss_baseline_mb"] > 0
    assert report["rss_growth_pct"] < 5.0 and report["passed"]
    assert report["source"]["frames"] > 0 and report["mean_tau"] >= 1.0


def test_soak_config_and_rss():
    assert rss_bytes() > 1 << 20
    with pytest.raises(UserInputError, match="more questions"):
        SoakConfig(artifacts="a", source="b", out="c", questions=5, warmup=10)
