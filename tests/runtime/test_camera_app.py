"""The camera app over HTTP with the tiny exported artifacts and a generated video: the page, the
live frame, a streamed answer (server-sent events) with τ and tokens/s, bad questions as errors."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("cv2", reason="the camera extra (opencv-python-headless) is not installed")
pytest.importorskip("fastapi", reason="the camera extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the camera extra (uvicorn) is not installed")
httpx = pytest.importorskip("httpx", reason="the camera extra (httpx) is not installed")

from runtime.camera.app import CameraApp  # noqa: E402
from runtime.camera.config import CameraConfig  # noqa: E402
from runtime.camera.synthetic import write_test_video  # noqa: E402


@pytest.fixture(scope="module")
def served(exported_tiny, tmp_path_factory):
    """(base URL, app) of the camera app on 127.0.0.1, a free port, over a generated video."""
    folder = tmp_path_factory.mktemp("camera_app")
    video = write_test_video(folder / "door.avi", frames=20)
    config = CameraConfig(artifacts=exported_tiny[0], source=str(video), port=0, threads=1, max_new_tokens=8,
                          max_question_chars=100, answer_log=folder / "answers.jsonl")
    app = CameraApp.from_config(config)
    handle = app.serve_in_thread()
    assert app.grabber.wait_for_frame(30)
    yield handle.url, app
    handle.stop()
    app.stop()


def read_events(client, url: str) -> list[tuple[str, object]]:
    """The server-sent events of one answer as (event, data) pairs."""
    events, name = [], None
    with client.stream("GET", url, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
    return events


def ask(client, base: str, question) -> httpx.Response:
    return client.post(f"{base}/ask", json={"question": question})


def test_page_frame_and_status(served):
    base, _ = served
    with httpx.Client() as client:
        page = client.get(base + "/")
        assert page.status_code == 200 and 'id="question"' in page.text and "EventSource" in page.text
        frame = client.get(base + "/frame.jpg")
        assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
        assert frame.content[:2] == b"\xff\xd8"
        status = client.get(base + "/status").json()
    assert status["source"]["state"] == "live" and status["source"]["frames"] > 0
    assert status["source_name"].startswith("file ")


def test_streamed_answer_with_metrics(served):
    base, app = served
    with httpx.Client() as client:
        reply = ask(client, base, "What colour is the square?")
        assert reply.status_code == 200
        events = read_events(client, f"{base}/answers/{reply.json()['id']}/events")
        status = client.get(base + "/status").json()
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names) <= {"piece", "done"}
    metrics = events[-1][1]
    assert metrics["new_tokens"] >= 1 and metrics["tau"] >= 1.0 and metrics["tokens_per_s"] > 0
    assert status["last"]["tau"] == metrics["tau"]
    answer = "".join(data for name, data in events if name == "piece")
    logged = [json.loads(line) for line in app.config.answer_log.read_text().splitlines()]
    assert logged[-1]["answer"] == answer and logged[-1]["question"] == "What colour is the square?"


def test_bad_questions_show_errors_and_the_next_works(served):
    base, _ = served
    with httpx.Client() as client:
        empty = ask(client, base, "   ")
        long = ask(client, base, "why " * 40)
        missing = client.get(f"{base}/answers/nope/events")
        good = ask(client, base, "Is anyone at the door?")
        events = read_events(client, f"{base}/answers/{good.json()['id']}/events")
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    assert long.status_code == 400 and "too long" in long.json()["error"]
    assert missing.status_code == 404
    assert events[-1][0] == "done"


def test_question_beyond_the_context_fails_and_the_session_recovers(served):
    """A question within the character limit whose prompt overflows the 64-token context."""
    base, _ = served
    with httpx.Client() as client:
        overflow = ask(client, base, " ".join(["zebra"] * 15) + "?")  # 90 characters, 115 tokens
        bad = read_events(client, f"{base}/answers/{overflow.json()['id']}/events")
        good = ask(client, base, "Is anyone at the door?")
        events = read_events(client, f"{base}/answers/{good.json()['id']}/events")
    assert bad[-1][0] == "failed" and "context" in bad[-1][1]
    assert events[-1][0] == "done"


def test_cli_errors_are_one_line(exported_tiny, tmp_path, capsys):
    from dream_s_edge.cli import EXIT_USER_ERROR, main

    assert main(["camera", "--artifacts", str(exported_tiny[0]), "--source", str(tmp_path / "nope.mp4")]) == EXIT_USER_ERROR
    assert capsys.readouterr().err.startswith("error: Camera source not found")
    video = write_test_video(tmp_path / "door.avi", frames=3)
    assert main(["camera", "--artifacts", str(tmp_path), "--source", str(video)]) == EXIT_USER_ERROR
    assert "manifest" in capsys.readouterr().err.lower()


def test_port_in_use_is_a_clear_error(exported_tiny, tmp_path, served):
    from dream_s_edge.cli import EXIT_USER_ERROR, main

    port = served[0].rsplit(":", 1)[1]
    video = write_test_video(tmp_path / "door.avi", frames=3)
    argv = ["camera", "--artifacts", str(exported_tiny[0]), "--source", str(video), "--port", port, "--threads", "1"]
    assert main(argv) == EXIT_USER_ERROR
