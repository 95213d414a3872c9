"""The camera app's HTTP side: a FastAPI app over a FrameGrabber and an Answerer.

Routes::

    GET  /                       the page (runtime.camera.page)
    GET  /frame.jpg              the newest frame as JPEG (503 before the first)
    GET  /status                 source state and counters, queue length, metrics of the last answer
    POST /ask {"question": str}  -> 200 {"id"} | 400 {"error"} (empty, too long, queue full)
    GET  /answers/{id}/events    server-sent events: piece (JSON text)*, then done (metrics) or failed (message)
"""

from __future__ import annotations

import json

from runtime.camera.page import PAGE
from runtime.camera.questions import Answerer
from runtime.camera.sources import FrameGrabber
from runtime.errors import UserInputError

SSE_NAMES = {"piece": "piece", "done": "done", "error": "failed"}


def sse_lines(job) -> object:
    """A Job's events as server-sent-event text blocks (a comment line for each heartbeat)."""
    for kind, data in job.follow():
        if kind == "ping":
            yield ": ping\n\n"
        elif kind in SSE_NAMES:
            yield f"event: {SSE_NAMES[kind]}\ndata: {json.dumps(data)}\n\n"


def build_app(grabber: FrameGrabber, answerer: Answerer, source_name: str):
    """The FastAPI application of the camera page."""
    from fastapi import Body, FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

    app = FastAPI(title="dream-s-edge camera", docs_url=None, redoc_url=None, openapi_url=None)
    no_store = {"Cache-Control": "no-store"}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/frame.jpg")
    def frame() -> Response:
        jpeg = grabber.latest.jpeg()
        if jpeg is None:
            return Response(status_code=503, headers=no_store)
        return Response(content=jpeg, media_type="image/jpeg", headers=no_store)

    @app.get("/status")
    def status() -> dict:
        return {"source_name": source_name, "source": grabber.stats.to_dict(), "pending": answerer.pending,
                "answered": answerer.answered, "failed": answerer.failed, "last": answerer.last_metrics}

    @app.post("/ask")
    def ask(payload: dict = Body(...)) -> JSONResponse:  # noqa: B008 - FastAPI's way to read a JSON body
        try:
            job = answerer.submit(payload.get("question"))
        except UserInputError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        return JSONResponse({"id": job.id})

    @app.get("/answers/{job_id}/events")
    def events(job_id: str) -> Response:
        job = answerer.get(job_id)
        if job is None:
            return JSONResponse({"error": f"No answer {job_id}; it may have been dropped."}, status_code=404)
        return StreamingResponse(sse_lines(job), media_type="text/event-stream",
                                 headers={**no_store, "X-Accel-Buffering": "no"})

    return app
