"""A small synthetic video instance segmentation set ("shapes_video") in the YouTube-VIS format.

Each video shows the thing shapes of :mod:`mask2former.data.synthetic` (circle, triangle,
square, cross, with their class colours) moving and turning over a still textured background.
Shapes move at constant speed, so some leave the frame or enter it during the video, and later
shapes occlude earlier ones. A shape whose visible part in a frame is smaller than
``min_visible_area`` is absent from that frame (null in the annotation lists), as in
YouTube-VIS. Layout (that of ``ytvis_2021``)::

    ROOT/{train,val}/JPEGImages/<video>/<frame>.jpg
    ROOT/{train,val}/instances.json    YouTube-VIS JSON, ground truth in both splits, RLE masks

Category ids are 1..4 (the contiguous id is id - 1). Generation is deterministic from the
seed and takes well under a second with the default parameters.
"""

import json
import os
from dataclasses import asdict, dataclass
from typing import Dict, List

import cv2
import numpy as np

from .synthetic import (
    SHAPES_CATEGORIES,
    dump_json,
    ensure_generated,
    mask_bbox,
    mask_rle,
    shape_polygon,
    stuff_background,
    thing_color,
)

__all__ = [
    "SHAPES_VIDEO_CATEGORIES",
    "SyntheticVideoConfig",
    "ensure_synthetic_video_dataset",
    "generate_synthetic_video_dataset",
    "synthetic_video_split_paths",
]

SHAPES_VIDEO_CATEGORIES: List[Dict] = [
    {"id": c["id"], "name": c["name"], "color": c["color"]}
    for c in SHAPES_CATEGORIES
    if c["isthing"]
]
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SyntheticVideoConfig:
    """Parameters that fully determine a generated video set.

    Attributes:
        num_train / num_val: number of videos per split.
        num_frames: frames per video.
        height / width: frame size in pixels.
        max_things: shapes per video, 1..max_things.
        max_speed: largest speed of a shape, in pixels per frame (per axis).
        min_visible_area: a shape with a smaller visible area is absent from the frame.
        seed: random seed; the same seed gives byte-identical files.
    """

    num_train: int = 32
    num_val: int = 8
    num_frames: int = 8
    height: int = 96
    width: int = 128
    max_things: int = 3
    max_speed: float = 4.0
    min_visible_area: int = 30
    seed: int = 0


def synthetic_video_split_paths(root: str, split: str) -> Dict[str, str]:
    """Paths of one split: image_root (the JPEGImages folder) and json_file."""
    return {
        "image_root": os.path.join(root, split, "JPEGImages"),
        "json_file": os.path.join(root, split, "instances.json"),
    }


def _track(rng: np.random.Generator, cfg: SyntheticVideoConfig) -> Dict:
    """A shape's class, size, colour and motion; it starts anywhere in or just outside the
    frame."""
    category_id = int(rng.integers(1, len(SHAPES_VIDEO_CATEGORIES) + 1))
    radius = rng.uniform(0.1, 0.22) * min(cfg.height, cfg.width)
    start = rng.uniform(-0.1, 1.1, size=2) * np.array([cfg.width, cfg.height])
    return {
        "category_id": category_id,
        "radius": radius,
        "start": start,
        "velocity": rng.uniform(-cfg.max_speed, cfg.max_speed, size=2),
        "angle": rng.uniform(0, 2 * np.pi),
        "spin": rng.uniform(-0.2, 0.2),
        "color": thing_color(rng, category_id),
    }


def _shape_mask(track: Dict, frame: int, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a track's full shape in ``frame`` (cut by the frame's border)."""
    cx, cy = track["start"] + frame * track["velocity"]
    vertices = shape_polygon(
        track["category_id"], cx, cy, track["radius"], track["angle"] + frame * track["spin"]
    )
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(vertices).astype(np.int32)], 1)
    return mask.astype(bool)


def _write_video(
    rng: np.random.Generator, cfg: SyntheticVideoConfig, image_root: str, video_id: int
) -> tuple:
    """Draw and write one video's frames.

    Returns:
        the video entry and its annotations (YouTube-VIS JSON), ids not yet global.
    """
    height, width = cfg.height, cfg.width
    background, _stuff = stuff_background(rng, max(height, width))
    background = background[:height, :width]
    tracks = [_track(rng, cfg) for _ in range(int(rng.integers(1, cfg.max_things + 1)))]
    name = f"video{video_id:03d}"
    os.makedirs(os.path.join(image_root, name), exist_ok=True)
    file_names = []
    per_track: List[List] = [[] for _ in tracks]
    for frame in range(cfg.num_frames):
        image = background + rng.normal(0, 3, size=background.shape)
        covered = np.zeros((height, width), dtype=bool)
        # the last track is drawn on top: go from it down, keeping what is still visible
        for index in range(len(tracks) - 1, -1, -1):
            shape = _shape_mask(tracks[index], frame, height, width)
            visible = shape & ~covered
            covered |= shape
            image[visible] = tracks[index]["color"]
            per_track[index].append(visible if visible.sum() >= cfg.min_visible_area else None)
        file_name = os.path.join(name, f"{frame:05d}.jpg")
        image = np.clip(image, 0, 255).astype(np.uint8)
        cv2.imwrite(
            os.path.join(image_root, file_name), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        file_names.append(file_name)
    video = {
        "id": video_id,
        "width": width,
        "height": height,
        "length": cfg.num_frames,
        "file_names": file_names,
    }
    annotations = [
        {
            "video_id": video_id,
            "category_id": track["category_id"],
            "iscrowd": 0,
            "segmentations": [None if m is None else mask_rle(m) for m in masks],
            "bboxes": [None if m is None else mask_bbox(m) for m in masks],
            "areas": [None if m is None else int(m.sum()) for m in masks],
        }
        for track, masks in zip(tracks, per_track)
        if any(m is not None for m in masks)
    ]
    return video, annotations


def generate_synthetic_video_dataset(root: str, cfg: SyntheticVideoConfig) -> None:
    """Write both splits into ``root``. The splits draw from two child streams of the seed, so
    changing ``num_train`` does not change the validation videos."""
    seeds = np.random.SeedSequence(cfg.seed).spawn(2)
    for split, num, seed in (("train", cfg.num_train, seeds[0]), ("val", cfg.num_val, seeds[1])):
        rng = np.random.default_rng(seed)
        paths = synthetic_video_split_paths(root, split)
        videos, annotations = [], []
        for video_id in range(1, num + 1):
            video, video_annotations = _write_video(rng, cfg, paths["image_root"], video_id)
            videos.append(video)
            annotations += video_annotations
        for ann_id, ann in enumerate(annotations, start=1):
            ann["id"] = ann_id
        os.makedirs(paths["image_root"], exist_ok=True)  # also for a split of 0 videos
        info = {"description": "synthetic moving shapes", "version": str(_FORMAT_VERSION)}
        categories = [{"id": c["id"], "name": c["name"]} for c in SHAPES_VIDEO_CATEGORIES]
        dump_json(
            paths["json_file"],
            {"info": info, "videos": videos, "annotations": annotations, "categories": categories},
        )


def ensure_synthetic_video_dataset(
    root: str, cfg: SyntheticVideoConfig = SyntheticVideoConfig(), *, overwrite: bool = False
) -> str:
    """Generate the set into ``root`` unless it is there, as
    :func:`mask2former.data.synthetic.ensure_generated` does (same marker and lock).

    Returns:
        ``root``.
    """
    marker = json.loads(json.dumps(dict(asdict(cfg), format_version=_FORMAT_VERSION)))
    return ensure_generated(
        root,
        marker,
        lambda folder: generate_synthetic_video_dataset(folder, cfg),
        overwrite=overwrite,
        what="synthetic video data set",
    )
