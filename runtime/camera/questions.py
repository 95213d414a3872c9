"""The question queue of the camera app: one worker thread, one `Session`, answers as event lists.

Data flow::

    Answerer.submit(question) -> Job (validated at once: empty / too long / queue full raise here)
    worker: Job -> newest frame (BGR -> RGB PIL) -> session.ask(stream=True)
        -> Job events: ("piece", text)* then ("done", metrics) or ("error", message)
    Job.follow() -> the events, blocking until the job ends (the SSE endpoint reads it)
    Repeater: submits a fixed question every N seconds, when the previous one has finished.

Only the last `keep_answers` finished jobs are kept, so memory stays flat over long runs.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from runtime.camera.sources import LatestFrame
from runtime.errors import DreamSEdgeError, PromptError, UserInputError

logger = logging.getLogger(__name__)

FINAL_KINDS = ("done", "error")


class Job:
    """One question and what happened to it, as a list of (kind, data) events.

    Kinds: "queued" (position), "piece" (text), "done" (metrics dict), "error" (message).
    """

    def __init__(self, job_id: str, question: str, origin: str):
        self.id = job_id
        self.question = question
        self.origin = origin
        self.events: list[tuple[str, object]] = []
        self._cond = threading.Condition()

    def emit(self, kind: str, data: object) -> None:
        with self._cond:
            self.events.append((kind, data))
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        return bool(self.events) and self.events[-1][0] in FINAL_KINDS

    @property
    def text(self) -> str:
        return "".join(data for kind, data in self.events if kind == "piece")

    def follow(self, heartbeat_s: float = 15.0) -> Iterator[tuple[str, object]]:
        """Yields every event from the first, waiting for new ones, until "done" or "error".

        Yields ("ping", None) after `heartbeat_s` without events, so a reader can notice a
        closed connection.
        """
        index = 0
        while True:
            with self._cond:
                if index >= len(self.events):
                    self._cond.wait(heartbeat_s)
                new = self.events[index:]
            if not new:
                yield "ping", None
            for kind, data in new:
                yield kind, data
                if kind in FINAL_KINDS:
                    return
            index += len(new)

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the job ends; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.finished, timeout)


def frame_to_pil(frame):
    """A BGR frame [H, W, 3] uint8 (OpenCV's order) -> RGB PIL image."""
    from PIL import Image

    return Image.fromarray(frame[:, :, ::-1].copy())


class Answerer:
    """Serves queued questions about the newest frame with one Session, in one worker thread.

    Args:
        session: a `runtime.session.Session` (or anything with its `ask` / `last_result`).
        latest: the frames.
        max_new_tokens: answer length cap.
        max_question_chars: longer questions are refused.
        max_pending: queue size; beyond it questions are refused.
        keep_answers: finished jobs kept for late readers.
        answer_log: JSON-lines file every finished answer is appended to.
    """

    def __init__(self, session, latest: LatestFrame, max_new_tokens: int = 48, max_question_chars: int = 500,
                 max_pending: int = 8, keep_answers: int = 64, answer_log: Path | None = None):
        self.session = session
        self.latest = latest
        self.max_new_tokens = max_new_tokens
        self.max_question_chars = max_question_chars
        self.keep_answers = keep_answers
        self.answer_log = Path(answer_log) if answer_log else None
        self.last_metrics: dict | None = None
        self.answered = 0
        self.failed = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="answerer", daemon=True)

    def start(self) -> Answerer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._queue.put(None)  # a sentinel behind the queued questions; blocks while the queue is full
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def check(self, question) -> str:
        """The question stripped, or PromptError when it is empty or too long."""
        if not isinstance(question, str) or not question.strip():
            raise PromptError("The question is empty.", hint='ask something, e.g. "What is in this picture?"')
        question = question.strip()
        if len(question) > self.max_question_chars:
            raise PromptError("The question is too long.",
                              note=f"{len(question)} characters, at most {self.max_question_chars}",
                              hint="ask a shorter question")
        return question

    def submit(self, question, origin: str = "user") -> Job:
        """Queues a question about the newest frame.

        Raises:
            PromptError: an empty or too long question.
            UserInputError: the queue is full.
        """
        job = Job(f"q{next(self._ids)}", self.check(question), origin)
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                self._jobs.pop(job.id, None)
            raise UserInputError("Too many questions are waiting.", note=f"{self._queue.maxsize} queued",
                                 hint="wait for the answers, then ask again") from None
        job.emit("queued", self._queue.qsize())
        return job

    def _forget_old(self) -> None:
        """Drops the oldest finished jobs beyond keep_answers (caller holds the lock)."""
        finished = [key for key, job in self._jobs.items() if job.finished]
        for key in finished[: max(len(finished) - self.keep_answers, 0)]:
            del self._jobs[key]

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            self._answer(job)

    def _answer(self, job: Job) -> None:
        frame, seq = self.latest.get()
        start = time.time()
        try:
            if frame is None:
                raise UserInputError("No frame from the camera yet.", hint="see the source status on the page")
            for piece in self.session.ask(frame_to_pil(frame), job.question, stream=True,
                                          max_new_tokens=self.max_new_tokens):
                job.emit("piece", piece)
        except DreamSEdgeError as error:
            self.failed += 1
            final = ("error", str(error))
        except Exception as error:  # noqa: BLE001 - the worker serves the whole run: log, report, go on
            logger.exception("Answering %r failed.", job.question)
            self.failed += 1
            final = ("error", f"Internal error: {type(error).__name__}: {error}")
        else:
            self.answered += 1
            self.last_metrics = self._metrics()
            final = ("done", self.last_metrics)
        self._log(job, seq, start, *final)  # before the final event: a client that saw it finds the log
        job.emit(*final)

    def _metrics(self) -> dict:
        result = self.session.last_result
        m = result.metrics
        return {"tau": m.tau, "tokens_per_s": m.tokens_per_s, "new_tokens": int(m.new_tokens),
                "wall_s": m.wall_s, "stop_reason": result.stop_reason}

    def _log(self, job: Job, seq: int, start: float, kind: str, data) -> None:
        if self.answer_log is None:
            return
        record = {"time": datetime.fromtimestamp(start, timezone.utc).isoformat(), "origin": job.origin,
                  "question": job.question, "frame": seq, "answer": job.text}
        record.update(data if kind == "done" else {"error": data})
        with self.answer_log.open("a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")


class Repeater:
    """Asks `question` every `every_s` seconds, skipping a turn while the previous one is unanswered."""

    def __init__(self, answerer: Answerer, question: str, every_s: float):
        self.answerer = answerer
        self.question = answerer.check(question)
        self.every_s = every_s
        self.last: Job | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="repeater", daemon=True)

    def start(self) -> Repeater:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if self.last is not None and not self.last.finished:
                continue
            try:
                self.last = self.answerer.submit(self.question, origin="repeat")
            except UserInputError as error:
                logger.warning("Repeating question skipped: %s", error)
