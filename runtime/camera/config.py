"""`CameraConfig`: every setting of the camera app, one frozen dataclass (the CLI fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import UserInputError

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnect attempts: initial_s * factor**attempt, capped at max_s."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt number `attempt` (0 is the first retry)."""
        return min(self.initial_s * self.factor ** max(attempt, 0), self.max_s)


@dataclass(frozen=True)
class CameraConfig:
    """Settings of one `dream-s-edge camera` run.

    Attributes:
        artifacts: folder written by `dream-s-edge export`.
        source: camera index ("0"), video file, image folder or stream URL (rtsp://, http://).
        port: TCP port of the web page, served on 127.0.0.1 only (0: any free port).
        provider: onnxruntime provider ("cpu", "cuda", "tensorrt").
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
        speculative: decode with the draft when the artifacts have one.
        max_new_tokens: answer length cap.
        max_question_chars: longer questions are refused before they reach the model.
        max_pending: questions waiting in the queue beyond which new ones are refused.
        keep_answers: finished answers kept for late SSE readers (older ones are dropped: flat memory).
        repeat_question: asked every `repeat_every_s` seconds when set ("Is anyone at the door?").
        repeat_every_s: period of the repeating question.
        answer_log: JSON-lines file every finished answer is appended to (None: no log).
        folder_interval_s: seconds each image of a folder source is shown.
        backoff: reconnect delays for a camera or stream that drops.
        jpeg_quality: quality of the live frame served to the page.
    """

    artifacts: Path
    source: str
    port: int = 8765
    provider: str = "cpu"
    threads: int | None = None
    speculative: bool = True
    max_new_tokens: int = 48
    max_question_chars: int = 500
    max_pending: int = 8
    keep_answers: int = 64
    repeat_question: str | None = None
    repeat_every_s: float = 30.0
    answer_log: Path | None = None
    folder_interval_s: float = 1.0
    backoff: Backoff = field(default_factory=Backoff)
    jpeg_quality: int = 80

    def __post_init__(self) -> None:
        if self.repeat_question is not None and self.repeat_every_s <= 0:
            raise UserInputError("The repeat period must be positive.", note=f"every {self.repeat_every_s} s",
                                 hint="pass --every with a number of seconds, e.g. --every 30")
        if self.max_question_chars < 1 or self.max_pending < 1 or self.keep_answers < 1:
            raise UserInputError("Question limits must be at least 1.",
                                 note=f"max_question_chars {self.max_question_chars}, max_pending {self.max_pending}, "
                                      f"keep_answers {self.keep_answers}")
