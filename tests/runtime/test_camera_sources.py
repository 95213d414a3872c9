"""Frame sources of the camera app: parsing SRC, a generated video and an image folder read through
OpenCV, newest frame wins, back-off on disconnect, undecodable frames skipped and counted."""

from __future__ import annotations

import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="the camera extra (opencv-python-headless) is not installed")

from runtime.camera.config import Backoff  # noqa: E402
from runtime.camera.sources import (  # noqa: E402
    CaptureReader,
    FolderReader,
    FrameGrabber,
    LatestFrame,
    SourceLost,
    SourceSpec,
    open_reader,
    parse_source,
)
from runtime.camera.synthetic import scene_frame, write_test_video  # noqa: E402
from runtime.errors import UserInputError  # noqa: E402

FAST = Backoff(initial_s=0.01, factor=2.0, max_s=0.04)


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_parse_source(tmp_path):
    video = write_test_video(tmp_path / "clip.avi", frames=3)
    assert parse_source("0") == SourceSpec("camera", 0)
    assert parse_source("rtsp://127.0.0.1:8554/cam").kind == "url"
    assert parse_source(str(tmp_path)) == SourceSpec("folder", str(tmp_path))
    assert parse_source(str(video)) == SourceSpec("file", str(video))
    with pytest.raises(UserInputError, match="not found"):
        parse_source(str(tmp_path / "missing.mp4"))


def test_backoff_grows_and_caps():
    b = Backoff(initial_s=0.5, factor=2.0, max_s=3.0)
    assert [b.delay(i) for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_video_file_reads_and_loops(tmp_path):
    video = write_test_video(tmp_path / "clip.avi", frames=5, fps=20)
    reader = open_reader(parse_source(str(video)))
    assert isinstance(reader, CaptureReader) and reader.interval_s == pytest.approx(0.05)
    frames = [reader.read() for _ in range(12)]  # past the end: the file loops like a camera
    reader.close()
    assert all(f is not None and f.shape == (64, 96, 3) for f in frames)
    # Motion-JPEG is lossy: the red square is still where it was drawn
    assert np.abs(frames[0].astype(int) - scene_frame(0).astype(int)).mean() < 10


def test_unopenable_video_raises_source_lost(tmp_path):
    bad = tmp_path / "not_a_video.avi"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(SourceLost):
        CaptureReader(SourceSpec("file", str(bad)), loop=True)


def test_folder_skips_undecodable_images(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), scene_frame(i))
    (tmp_path / "2.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    reader = FolderReader(SourceSpec("folder", str(tmp_path)), interval_s=0.0)
    results = [reader.read() for _ in range(6)]
    assert [r is None for r in results] == [False, False, True] * 2


def test_grabber_counts_skipped_frames(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), scene_frame(0))
    (tmp_path / "b.png").write_bytes(b"garbage")
    latest = LatestFrame()
    grabber = FrameGrabber(parse_source(str(tmp_path)), latest, FAST,
                           opener=lambda spec: open_reader(spec, folder_interval_s=0.005)).start()
    try:
        _wait(lambda: grabber.stats.skipped >= 3 and grabber.stats.frames >= 3)
    finally:
        grabber.stop()
    assert grabber.stats.state == "live" and grabber.stats.reconnects == 0
    assert latest.get()[0].shape == (64, 96, 3)
    assert latest.jpeg()[:2] == b"\xff\xd8"


class FlakyCamera:
    """Fails to open `fail_opens` times; after that each connection gives `frames` frames and drops."""

    interval_s = 0.0

    def __init__(self, fail_opens: int, frames: int):
        self.fail_opens, self.frames, self.opens, self.left = fail_opens, frames, 0, 0

    def open(self, spec):
        self.opens += 1
        if self.opens <= self.fail_opens:
            raise SourceLost("Cannot open camera 7.")
        self.left = self.frames
        return self

    def read(self):
        if not self.left:
            raise SourceLost("The source stopped giving frames.")
        self.left -= 1
        return np.full((4, 4, 3), self.left, dtype=np.uint8)

    def close(self):
        pass


def test_grabber_retries_with_backoff_and_recovers():
    camera = FlakyCamera(fail_opens=3, frames=5)
    latest = LatestFrame()
    grabber = FrameGrabber(SourceSpec("camera", 7), latest, FAST, opener=camera.open).start()
    try:
        _wait(lambda: grabber.stats.reconnects >= 2)
    finally:
        grabber.stop()
    # three failed opens back off 0.01, 0.02, 0.04; a good frame resets the back-off after each drop
    assert grabber.delays[:3] == [0.01, 0.02, 0.04]
    assert grabber.delays[3:5] == [0.01, 0.01]
    assert grabber.stats.frames >= 10
    assert "Retrying in" in grabber.stats.message or grabber.stats.state == "live"


def test_newest_frame_wins():
    latest = LatestFrame()
    assert latest.get() == (None, 0) and latest.jpeg() is None
    for value in range(5):
        latest.put(np.full((8, 8, 3), value, dtype=np.uint8))
    frame, seq = latest.get()
    assert seq == 5 and int(frame[0, 0, 0]) == 4
