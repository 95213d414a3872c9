"""Frame sources for the camera app: a camera index, a video file, an image folder or a stream URL.

Data flow::

    parse_source("0" | "clip.mp4" | "frames/" | "rtsp://...") -> SourceSpec
    open_reader(spec) -> CaptureReader (cv2.VideoCapture) | FolderReader (cv2.imdecode per file)
    FrameGrabber thread: reader.read() -> LatestFrame.put   (newest frame wins; nothing queues up)

A reader returns a BGR frame [H, W, 3] uint8, or None for a frame that cannot be decoded (skipped
and counted), and raises `SourceLost` when the camera or stream is gone; the grabber then retries
with back-off and never stops on its own. A video file loops, so it can stand in for a camera.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.camera.config import Backoff
from runtime.errors import DreamSEdgeError, UserInputError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_FPS = 25.0


class SourceLost(DreamSEdgeError):
    """The camera or stream cannot be opened or stopped giving frames (retried with back-off)."""


@dataclass(frozen=True)
class SourceSpec:
    """What a SRC string names: kind is "camera", "file", "folder" or "url"; target is what OpenCV opens."""

    kind: str
    target: int | str

    def describe(self) -> str:
        return f"camera {self.target}" if self.kind == "camera" else f"{self.kind} {self.target}"


def parse_source(source: str) -> SourceSpec:
    """A SRC string -> SourceSpec.

    Raises:
        UserInputError: a path that does not exist (a typo would otherwise retry forever).
    """
    text = str(source).strip()
    if text.isdigit():
        return SourceSpec("camera", int(text))
    if "://" in text:
        return SourceSpec("url", text)
    path = Path(text).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path))
    if path.is_file():
        return SourceSpec("file", str(path))
    raise UserInputError(f"Camera source not found: {text}.",
                         hint="pass a camera index (0), a video file, an image folder or a stream URL")


class CaptureReader:
    """A cv2.VideoCapture over a camera index, a video file (looped) or a stream URL.

    Args:
        spec: the source.
        loop: rewind at the end (video files).
    """

    def __init__(self, spec: SourceSpec, loop: bool = False):
        import cv2

        self._cv2 = cv2
        self.capture = cv2.VideoCapture(spec.target)
        if not self.capture.isOpened():
            self.capture.release()
            raise SourceLost(f"Cannot open {spec.describe()}.", hint="check that it is connected and not in use")
        self.loop = loop
        fps = self.capture.get(cv2.CAP_PROP_FPS) if loop else 0.0
        # A file is read as fast as the disk allows, so pace it at its own frame rate; a live
        # camera or stream blocks in grab() until its next frame.
        self.interval_s = 1.0 / (fps if 0 < fps < 1000 else DEFAULT_FPS) if loop else 0.0
        self._frames_since_open = 0

    def read(self) -> np.ndarray | None:
        """The next BGR frame [H, W, 3], or None when it cannot be decoded. Raises SourceLost."""
        if not self.capture.grab() and not (self.loop and self._frames_since_open and self._rewind()):
            raise SourceLost("The source stopped giving frames.", note=f"after {self._frames_since_open} frames")
        self._frames_since_open += 1
        ok, frame = self.capture.retrieve()
        if not ok or frame is None or frame.size == 0:
            return None
        return frame

    def _rewind(self) -> bool:
        self.capture.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
        return self.capture.grab()

    def close(self) -> None:
        self.capture.release()


class FolderReader:
    """The images of a folder in name order, each shown `interval_s`, listed again at every pass."""

    def __init__(self, spec: SourceSpec, interval_s: float = 1.0):
        import cv2

        self._cv2 = cv2
        self.folder = Path(spec.target)
        self.interval_s = interval_s
        self._pending: list[Path] = []

    def _list(self) -> list[Path]:
        if not self.folder.is_dir():
            raise SourceLost(f"The image folder {self.folder} is gone.")
        files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceLost(f"No images in {self.folder}.", hint=f"add files ending in {', '.join(IMAGE_SUFFIXES)}")
        return files

    def read(self) -> np.ndarray | None:
        """The next image as BGR [H, W, 3], or None when it cannot be decoded. Raises SourceLost."""
        if not self._pending:
            self._pending = self._list()
        path = self._pending.pop(0)
        try:
            data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        except OSError:  # deleted or unreadable since listing: a frame that cannot be decoded
            return None
        if data.size == 0:
            return None
        return self._cv2.imdecode(data, self._cv2.IMREAD_COLOR)

    def close(self) -> None:
        self._pending = []


def open_reader(spec: SourceSpec, folder_interval_s: float = 1.0):
    """Opens the reader for a source. Raises SourceLost when it cannot be opened now."""
    if spec.kind == "folder":
        return FolderReader(spec, folder_interval_s)
    return CaptureReader(spec, loop=spec.kind == "file")


class LatestFrame:
    """The newest frame, with a sequence number and its JPEG encoding made once on demand."""

    def __init__(self, jpeg_quality: int = 80):
        self._lock = threading.Lock()
        self._frame: np.ndarray | None = None
        self._jpeg: bytes | None = None
        self.seq = 0
        self.time = 0.0
        self.jpeg_quality = jpeg_quality

    def put(self, frame: np.ndarray) -> None:
        """Replaces the frame (BGR [H, W, 3] uint8); older frames are dropped, never queued."""
        with self._lock:
            self._frame, self._jpeg = frame, None
            self.seq += 1
            self.time = time.time()

    def get(self) -> tuple[np.ndarray | None, int]:
        """(newest BGR frame or None, its sequence number)."""
        with self._lock:
            return self._frame, self.seq

    def jpeg(self) -> bytes | None:
        """The newest frame as JPEG bytes (None before the first frame)."""
        import cv2

        with self._lock:
            if self._frame is not None and self._jpeg is None:
                ok, buffer = cv2.imencode(".jpg", self._frame, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
                self._jpeg = buffer.tobytes() if ok else None
            return self._jpeg


@dataclass
class GrabberStats:
    """Counters and state of a FrameGrabber, read by the page's status line."""

    state: str = "connecting"
    message: str = ""
    frames: int = 0
    skipped: int = 0
    reconnects: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class FrameGrabber:
    """A thread that keeps `latest` filled from a source, retrying with back-off when it drops.

    Args:
        spec: the source.
        latest: where frames go.
        backoff: reconnect delays (default `Backoff()`).
        opener: spec -> reader (tests inject fakes); the default is `open_reader`.
    """

    def __init__(self, spec: SourceSpec, latest: LatestFrame, backoff: Backoff | None = None,
                 opener: Callable | None = None):
        self.spec = spec
        self.latest = latest
        self.backoff = backoff or Backoff()
        self.opener = opener or open_reader
        self.stats = GrabberStats()
        self.delays: list[float] = []  # the back-off waits so far (last 100), for the status and tests
        self._attempt = 0  # reconnect attempts since the last good frame
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frame-grabber", daemon=True)

    def start(self) -> FrameGrabber:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def wait_for_frame(self, timeout: float) -> bool:
        """Blocks until a first frame arrived; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.latest.get()[0] is None:
            if time.monotonic() > deadline or self._stop.is_set():
                return False
            time.sleep(0.02)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reader = self.opener(self.spec)
            except SourceLost as error:
                self._lost(error)
                continue
            try:
                self._pump(reader)
            except SourceLost as error:
                self.stats.reconnects += 1
                self._lost(error)
            finally:
                reader.close()

    def _pump(self, reader) -> None:
        """Reads until stopped (or SourceLost); a good frame resets the back-off."""
        while not self._stop.is_set():
            frame = reader.read()
            if frame is None:
                self.stats.skipped += 1
            else:
                self.latest.put(frame)
                self.stats.frames += 1
                if self.stats.state != "live":
                    logger.info("Receiving frames from %s.", self.spec.describe())
                self.stats.state, self.stats.message, self._attempt = "live", "", 0
            self._stop.wait(reader.interval_s)

    def _lost(self, error: SourceLost) -> None:
        delay = self.backoff.delay(self._attempt)
        self._attempt += 1
        self.delays = [*self.delays[-99:], delay]
        self.stats.state = "retrying"
        self.stats.message = f"{self.spec.describe()}: {error.what} Retrying in {delay:g} s."
        logger.warning("%s", self.stats.message)
        self._stop.wait(delay)
