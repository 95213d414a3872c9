"""The on-device camera QA app: frames from a camera, file, folder or stream, questions answered by one
torch-free `runtime.session.Session`, and a small local web page.

Data flow::

    sources.FrameGrabber (OpenCV; newest frame wins, back-off on disconnect, bad frames skipped)
        -> sources.LatestFrame
    questions.Answerer (one worker thread, one Session, a bounded queue; answers as event lists)
        <- server (FastAPI on 127.0.0.1: page, /frame.jpg, POST /ask, SSE /answers/{id}/events)
        <- questions.Repeater (an optional question every N seconds)
    app.CameraApp wires them; soak.run_soak drives N questions through the same path.

Modules here import numpy, OpenCV, FastAPI and uvicorn (the `camera` extra), never torch.
"""
