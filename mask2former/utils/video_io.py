"""Reading video files with OpenCV, with errors that say what to do."""

import itertools
import os
from typing import Iterator, List, Optional

import cv2
import numpy as np

from .image_io import ImageReadError, read_image

__all__ = ["VideoReadError", "iter_frames", "open_video", "read_video_frames"]


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


def read_video_frames(path: str, format: str = "RGB", max_frames: Optional[int] = None) -> List:
    """All frames of a video file (the first ``max_frames``) in ``format`` ("RGB", "BGR", ...
    as for images), in memory.

    Raises:
        VideoReadError: the file cannot be opened, or no frame can be decoded.
    """
    capture = open_video(path)
    try:
        frames = [
            read_image(frame, format, array_channel_order="BGR")
            for frame in itertools.islice(iter_frames(capture), max_frames)
        ]
    finally:
        capture.release()
    if not frames:
        raise VideoReadError(f"{path}: no frame could be decoded; the video is empty or corrupt.")
    return frames
