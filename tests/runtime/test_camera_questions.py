"""The camera app's question queue with a fake session: order, validation, errors that leave the
worker serving, the bounded queue, kept answers, the JSON-lines log and the repeating question."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("cv2", reason="the camera extra (opencv-python-headless) is not installed")

from runtime.camera.questions import Answerer, Repeater  # noqa: E402
from runtime.camera.sources import LatestFrame  # noqa: E402
from runtime.errors import CapacityError, PromptError, UserInputError  # noqa: E402


class FakeSession:
    """Answers "<question> @ <red value>" piece by piece; "overflow" raises CapacityError; can be held."""

    def __init__(self):
        self.asked = []
        self.last_result = None
        self.gate = threading.Event()
        self.gate.set()

    def ask(self, image, question, stream=True, max_new_tokens=48):
        self.gate.wait(10)
        self.asked.append(question)
        if question == "overflow":
            raise CapacityError("The prompt does not fit the target's KV cache.")
        red = image.getpixel((0, 0))[0]
        for word in f"{question} @ {red}".split():
            yield word + " "
        metrics = SimpleNamespace(tau=2.0, tokens_per_s=10.0, new_tokens=3, wall_s=0.3)
        self.last_result = SimpleNamespace(metrics=metrics, stop_reason="eos")


def _frames():
    latest = LatestFrame()
    frame = np.zeros((4, 4, 3), dtype=np.uint8)
    frame[..., 2] = 200  # BGR: red channel
    latest.put(frame)
    return latest


def test_answers_stream_in_order_about_the_newest_frame(tmp_path):
    session = FakeSession()
    answerer = Answerer(session, _frames(), answer_log=tmp_path / "answers.jsonl").start()
    try:
        jobs = [answerer.submit(q) for q in ("first?", "  second?  ")]
        assert all(job.wait(10) for job in jobs)
    finally:
        answerer.stop()
    assert session.asked == ["first?", "second?"]
    kinds = [kind for kind, _ in jobs[0].follow()]
    assert kinds[0] == "queued" and kinds[-1] == "done" and "piece" in kinds
    assert jobs[1].text == "second? @ 200 "
    assert jobs[1].events[-1][1]["tau"] == 2.0
    records = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [r["question"] for r in records] == ["first?", "second?"]
    assert records[0]["answer"] == "first? @ 200 " and records[0]["tokens_per_s"] == 10.0


@pytest.mark.parametrize("question, message", [("", "empty"), ("   ", "empty"), (None, "empty"),
                                               ("x" * 41, "too long")])
def test_bad_questions_are_refused_at_once(question, message):
    answerer = Answerer(FakeSession(), _frames(), max_question_chars=40)
    with pytest.raises(PromptError, match=message):
        answerer.submit(question)


def test_an_error_is_reported_and_the_next_question_works():
    answerer = Answerer(FakeSession(), _frames()).start()
    try:
        bad, good = answerer.submit("overflow"), answerer.submit("fine?")
        assert bad.wait(10) and good.wait(10)
    finally:
        answerer.stop()
    assert bad.events[-1][0] == "error" and "KV cache" in bad.events[-1][1]
    assert good.events[-1][0] == "done" and good.text.startswith("fine?")
    assert (answerer.answered, answerer.failed) == (1, 1)


def test_no_frame_yet_is_an_error():
    answerer = Answerer(FakeSession(), LatestFrame()).start()
    try:
        job = answerer.submit("anyone there?")
        assert job.wait(10)
    finally:
        answerer.stop()
    assert job.events[-1][0] == "error" and "No frame" in job.events[-1][1]


def test_queue_is_bounded_and_old_answers_are_dropped():
    session = FakeSession()
    session.gate.clear()  # hold the worker on the first question
    answerer = Answerer(session, _frames(), max_pending=2, keep_answers=3).start()
    try:
        first = answerer.submit("q0")
        deadline = time.monotonic() + 5
        while answerer.pending and time.monotonic() < deadline:  # the worker took q0
            time.sleep(0.01)
        waiting = [answerer.submit("q1"), answerer.submit("q2")]
        with pytest.raises(UserInputError, match="Too many questions"):
            answerer.submit("q3")
        session.gate.set()
        assert all(job.wait(10) for job in [first, *waiting])
        more = [answerer.submit(f"r{i}") for i in range(2)]
        assert all(job.wait(10) for job in more)
        answerer.submit("last").wait(10)
    finally:
        answerer.stop()
    assert answerer.get(first.id) is None  # dropped: only the newest finished answers are kept
    assert answerer.get(more[-1].id) is not None


def test_repeater_asks_every_period_and_logs(tmp_path):
    log = tmp_path / "door.jsonl"
    answerer = Answerer(FakeSession(), _frames(), answer_log=log).start()
    repeater = Repeater(answerer, "Is anyone at the door?", every_s=0.05).start()
    try:
        deadline = time.monotonic() + 10
        while (not log.exists() or len(log.read_text().splitlines()) < 3) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        repeater.stop()
        answerer.stop()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) >= 3
    assert {r["origin"] for r in records} == {"repeat"} and records[0]["question"] == "Is anyone at the door?"
    with pytest.raises(PromptError):
        Repeater(answerer, "  ", every_s=1)
