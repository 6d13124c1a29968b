"""Reading video files with OpenCV, with errors that say what to do."""

import itertools
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional

import cv2
import numpy as np

from .image_io import ImageReadError, read_image

__all__ = [
    "VideoClip",
    "VideoReadError",
    "decoded_frames",
    "iter_frames",
    "open_video",
    "read_video",
]


class VideoReadError(ImageReadError):
    """A video file could not be opened; the message names the file and the fix."""


def open_video(path: str) -> cv2.VideoCapture:
    """Open a video file for reading (release the capture when done).

    Raises:
        VideoReadError: the file does not exist or OpenCV cannot decode it.
    """
    capture = cv2.VideoCapture(path)
    if capture.isOpened():
        return capture
    capture.release()
    if not os.path.exists(path):
        raise VideoReadError(f"{path}: no such video file.")
    raise VideoReadError(
        f"{path}: cannot open the video (not a video, corrupt, or a codec OpenCV cannot "
        "decode); convert it to an H.264 or MPEG-4 .mp4 file, e.g. with ffmpeg."
    )


def iter_frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """The frames of an open capture, (H, W, 3) uint8 BGR, until it ends."""
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def decoded_frames(
    capture: cv2.VideoCapture, path: str, format: str = "RGB", max_frames: Optional[int] = None
) -> Iterator[np.ndarray]:
    """The frames of an open capture of ``path`` in ``format`` ("RGB", "BGR", ... as for
    images), the first ``max_frames``, one at a time.

    Raises:
        VideoReadError: no frame can be decoded (when the first is asked for).
    """
    frames = itertools.islice(iter_frames(capture), max_frames)
    first = next(frames, None)
    if first is None:
        raise VideoReadError(f"{path}: no frame could be decoded; the video is empty or corrupt.")
    for frame in itertools.chain([first], frames):
        yield read_image(frame, format, array_channel_order="BGR")


@dataclass
class VideoClip:
    """Frames read from a video file.

    Attributes:
        frames: (H, W, 3) uint8 arrays in the format asked for.
        fps: the frame rate the file gives (0 or NaN when it gives none).
        cut_short: ``max_frames`` stopped the reading before the end of the video.
    """

    frames: List[np.ndarray]
    fps: float
    cut_short: bool


def read_video(path: str, format: str = "RGB", max_frames: Optional[int] = None) -> VideoClip:
    """All frames of a video file (the first ``max_frames``) in ``format`` ("RGB", "BGR", ...
    as for images), in memory.

    Raises:
        VideoReadError: the file cannot be opened, or no frame can be decoded.
    """
    capture = open_video(path)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        frames = list(decoded_frames(capture, path, format, max_frames))
        cut_short = max_frames is not None and capture.grab()
    finally:
        capture.release()
    return VideoClip(frames, fps, bool(cut_short))
