"""`CameraApp`: wires a frame source, one Session, the question queue and the web page, and serves them.

    CameraApp.from_config(config)          loads the Session once (it serves the whole run)
        .start()                           grabber, answerer and repeater threads
        .serve()                           uvicorn on 127.0.0.1:port until Ctrl-C, then stop()
        .serve_in_thread() -> ServerHandle the same in a thread (tests, soak)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from runtime.camera.config import LOOPBACK, CameraConfig
from runtime.camera.questions import Answerer, Repeater
from runtime.camera.sources import FrameGrabber, LatestFrame, open_reader, parse_source
from runtime.errors import DreamSEdgeError

logger = logging.getLogger(__name__)


class ServerError(DreamSEdgeError):
    """The web server could not start (port in use, say)."""


@dataclass
class ServerHandle:
    """A uvicorn server running in a thread; `url` is where the page is."""

    server: object
    thread: threading.Thread
    url: str

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


class CameraApp:
    """The running parts of one camera session (see the module docstring)."""

    def __init__(self, config: CameraConfig, session):
        self.config = config
        self.spec = parse_source(config.source)
        self.latest = LatestFrame(config.jpeg_quality)
        self.grabber = FrameGrabber(self.spec, self.latest, config.backoff,
                                    opener=lambda spec: open_reader(spec, config.folder_interval_s))
        self.answerer = Answerer(session, self.latest, config.max_new_tokens, config.max_question_chars,
                                 config.max_pending, config.keep_answers, config.answer_log)
        self.repeater = None
        if config.repeat_question:
            self.repeater = Repeater(self.answerer, config.repeat_question, config.repeat_every_s)

    @classmethod
    def from_config(cls, config: CameraConfig) -> CameraApp:
        """Checks the source, then loads the artifacts into one Session."""
        from runtime.session import Session

        parse_source(config.source)  # a missing file fails before the slow model load
        session = Session.from_dir(config.artifacts, provider=config.provider, speculative=config.speculative,
                                   threads=config.threads)
        return cls(config, session)

    def start(self) -> CameraApp:
        self.grabber.start()
        self.answerer.start()
        if self.repeater:
            self.repeater.start()
        return self

    def stop(self) -> None:
        if self.repeater:
            self.repeater.stop()
        self.grabber.stop()
        self.answerer.stop()

    def asgi(self):
        from runtime.camera.server import build_app

        return build_app(self.grabber, self.answerer, self.spec.describe())

    def _server(self, port: int):
        import uvicorn

        config = uvicorn.Config(self.asgi(), host=LOOPBACK, port=port, log_level="warning",
                                timeout_graceful_shutdown=2)
        return uvicorn.Server(config)

    def serve(self) -> None:
        """Serves the page on 127.0.0.1:port until interrupted; stops the threads afterwards."""
        server = self._server(self.config.port)
        self.start()
        try:
            server.run()
        except SystemExit as error:  # uvicorn exits when it cannot bind the port
            raise self._bind_error() from error
        finally:
            self.stop()
        if not server.started:
            raise self._bind_error()

    def _bind_error(self) -> ServerError:
        return ServerError(f"The web page could not be served on {LOOPBACK}:{self.config.port}.",
                           hint="the port may be in use: pass another with --port")

    def serve_in_thread(self, timeout: float = 20.0) -> ServerHandle:
        """Starts the threads and the server in the background; returns once it accepts connections."""
        server = self._server(self.config.port)
        self.start()
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise self._bind_error()
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        return ServerHandle(server, thread, f"http://{LOOPBACK}:{port}")
