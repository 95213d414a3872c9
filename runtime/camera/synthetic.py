"""Synthetic camera sources for tests, the soak script and the README example (no camera needed).

`write_test_video` draws a red square moving over a blue background into a video file with
OpenCV's VideoWriter (Motion-JPEG in an .avi, which every OpenCV build can write and read back).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import DreamSEdgeError


def scene_frame(index: int, width: int = 96, height: int = 64) -> np.ndarray:
    """Frame `index` of the synthetic scene, BGR [height, width, 3] uint8."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[:] = (180, 90, 30)  # blue-ish background (BGR)
    side = max(min(width, height) // 3, 1)
    x = (index * 4) % max(width - side, 1)
    y = (height - side) // 2
    frame[y:y + side, x:x + side] = (0, 0, 230)  # red square
    return frame


def write_test_video(path: str | Path, frames: int = 30, fps: float = 10.0, width: int = 96,
                     height: int = 64) -> Path:
    """Writes the synthetic scene as a Motion-JPEG .avi and returns its path."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise DreamSEdgeError(f"OpenCV cannot write the video {path}.", hint="check the folder is writable")
    try:
        for i in range(frames):
            writer.write(scene_frame(i, width, height))
    finally:
        writer.release()
    return path
