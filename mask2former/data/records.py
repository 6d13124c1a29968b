"""What identifies a dataset dict, an image's or a video's (YouTube-VIS style, one dict per
video with its frames in ``file_names``): the file or folder and the id that messages, bad-sample
reports and exclude files name it by."""

import os
from typing import Any, Dict, Optional

__all__ = ["is_video_record", "record_id", "record_path", "video_has_annotations"]


def is_video_record(record: Dict) -> bool:
    """Whether ``record`` is a video (frames in ``file_names``) rather than an image."""
    return "file_names" in record and "file_name" not in record


def record_path(record: Dict) -> str:
    """An image's file, or a video's frame folder (its first frame's, when the frames are spread
    over several)."""
    if is_video_record(record):
        frames = record["file_names"]
        return os.path.dirname(frames[0]) if frames else "<video without frames>"
    return str(record.get("file_name", "<no file_name>"))


def record_id(record: Dict) -> Optional[Any]:
    """An image's ``image_id`` or a video's ``video_id``; None when it has none."""
    return record.get("video_id" if is_video_record(record) else "image_id")


def video_has_annotations(record: Dict) -> bool:
    """Whether a video has a non-crowd instance in at least one frame (what
    DATALOADER.FILTER_EMPTY_ANNOTATIONS keeps, as Detectron2 does for images)."""
    return any(
        not annotation.get("iscrowd", 0)
        for frame in record.get("annotations", ())
        for annotation in frame
    )
