"""Machine-readable files for predictions, in the formats of the COCO tools.

- panoptic: a PNG of segment ids encoded with panopticapi's ``id2rgb`` and a JSON holding the
  COCO panoptic annotation of the image (``file_name``, ``segments_info``) and the categories;
- instances: a JSON list in the COCO results format (``pycocotools.coco.COCO.loadRes``
  reads it): one dict per instance with an RLE ``segmentation``, an XYWH ``bbox`` and a
  ``score``;
- semantic: a PNG of class indices (uint8; uint16 when there are more than 256 classes);
- video tracks (a video model's prediction): a JSON list in the YouTube-VIS results format,
  one dict per track with per-frame RLE ``segmentations`` (None where the track is empty) and a
  ``score``.

:func:`write_prediction` writes all of them for one image, under the names the demos use
(``STEM.panoptic.png``, ``STEM.panoptic.json``, ``STEM.instances.json``, ``STEM.semantic.png``).

Category ids in the JSON files are the data set's ids (as in its annotation files) when the
metadata maps them (``thing_dataset_id_to_contiguous_id`` / ``stuff_...``), else the model's
contiguous indices; each entry also carries the category name.
"""

import json
import os
from typing import Any, Dict, List, Optional, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.data.catalog import Metadata
from panopticapi.utils import id2rgb

from .results import InstanceResult, PanopticResult, Prediction, SemanticResult

__all__ = [
    "RESULT_FILE_SUFFIXES",
    "contiguous_to_dataset_ids",
    "encode_rle",
    "encode_video_masks",
    "write_prediction",
    "write_panoptic",
    "write_instances",
    "write_semantic",
    "write_tracks",
]


def contiguous_to_dataset_ids(metadata: Optional[Metadata]) -> Dict[int, int]:
    """Map from the model's contiguous class index to the data set's category id."""
    mapping: Dict[int, int] = {}
    if metadata is None:
        return mapping
    for key in ("stuff_dataset_id_to_contiguous_id", "thing_dataset_id_to_contiguous_id"):
        for dataset_id, contiguous_id in metadata.get(key, {}).items():
            mapping[int(contiguous_id)] = int(dataset_id)
    return mapping


def encode_rle(masks: np.ndarray) -> List[Dict[str, Any]]:
    """(N, H, W) bool masks -> N COCO RLE dicts with ``counts`` as str (JSON-ready)."""
    if masks.shape[0] == 0:
        return []
    encoded = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in encoded:
        rle["counts"] = rle["counts"].decode("ascii")
    return encoded


def encode_video_masks(masks: np.ndarray) -> List[Optional[Dict[str, Any]]]:
    """(L, H, W) per-frame masks of one track -> L RLEs (str ``counts``), None for an empty
    frame: a track's ``segmentations`` in the YouTube-VIS results format."""
    masks = np.asarray(masks, dtype=bool)
    present = masks.reshape(len(masks), -1).any(axis=1)
    encoded = iter(encode_rle(masks[present]))
    return [next(encoded) if keep else None for keep in present]


# The file each result is written to, as a suffix of the image's stem.
RESULT_FILE_SUFFIXES = {
    "panoptic_png": ".panoptic.png",
    "panoptic_json": ".panoptic.json",
    "instances_json": ".instances.json",
    "semantic_png": ".semantic.png",
}


def _write_json(path: str, content: Union[dict, list]) -> None:
    with open(path, "w") as f:
        json.dump(content, f)


def _write_png(path: str, array: np.ndarray) -> None:
    if not cv2.imwrite(path, array):
        raise OSError(f"Could not write {path}; check that its folder is writable.")


def write_panoptic(
    result: PanopticResult,
    png_path: str,
    json_path: str,
    *,
    image_id: Union[int, str],
    metadata: Optional[Metadata] = None,
) -> None:
    """Write a panoptic result in the COCO panoptic format.

    Args:
        result: the panoptic result.
        png_path: PNG of the segment ids, RGB-encoded (``id = R + 256 * G + 256**2 * B``).
        json_path: JSON with ``image_id``, ``file_name`` (the PNG's base name),
            ``segments_info`` (``id``, ``category_id``, ``category_name``, ``isthing``,
            ``iscrowd``, ``area``, ``bbox`` XYWH, ``score`` when known) and ``categories``.
        image_id: id written into the JSON (e.g. the input's file stem).
        metadata: the data set's metadata, to translate category ids.
    """
    to_dataset_id = contiguous_to_dataset_ids(metadata)
    _write_png(png_path, id2rgb(result.segment_ids)[:, :, ::-1])
    segments_info = []
    categories = {}
    for segment in result.segments:
        mask = result.segment_ids == segment["id"]
        ys, xs = np.nonzero(mask)
        bbox = (
            [
                int(xs.min()),
                int(ys.min()),
                int(xs.max() - xs.min()) + 1,
                int(ys.max() - ys.min()) + 1,
            ]
            if xs.size
            else [0, 0, 0, 0]
        )
        category_id = to_dataset_id.get(segment["category_id"], segment["category_id"])
        info = {
            "id": segment["id"],
            "category_id": category_id,
            "category_name": segment["category_name"],
            "isthing": int(segment["isthing"]),
            "iscrowd": 0,
            "area": segment["area"],
            "bbox": bbox,
        }
        if segment["score"] is not None:
            info["score"] = segment["score"]
        segments_info.append(info)
        categories[category_id] = {
            "id": category_id,
            "name": segment["category_name"],
            "isthing": int(segment["isthing"]),
        }
    _write_json(
        json_path,
        {
            "image_id": image_id,
            "file_name": os.path.basename(png_path),
            "segments_info": segments_info,
            "categories": [categories[key] for key in sorted(categories)],
        },
    )


def write_instances(
    result: InstanceResult,
    json_path: str,
    *,
    image_id: Union[int, str],
    metadata: Optional[Metadata] = None,
) -> None:
    """Write instances as a COCO results list.

    Each entry: ``image_id``, ``category_id``, ``category_name``, ``score``, ``bbox``
    ([x, y, width, height] in pixels) and ``segmentation`` (RLE with str ``counts``).
    """
    to_dataset_id = contiguous_to_dataset_ids(metadata)
    entries = []
    for index, rle in enumerate(encode_rle(result.masks)):
        x0, y0, x1, y1 = (float(v) for v in result.boxes[index])
        contiguous_id = int(result.classes[index])
        entries.append(
            {
                "image_id": image_id,
                "category_id": to_dataset_id.get(contiguous_id, contiguous_id),
                "category_name": result.class_names[index],
                "score": float(result.scores[index]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "segmentation": rle,
            }
        )
    _write_json(json_path, entries)


# Frames of a track encoded together by write_tracks.
_ENCODED_FRAMES = 32


def write_tracks(prediction, json_path: str, *, video_id: Union[int, str], metadata=None) -> None:
    """Write a video's tracks in the YouTube-VIS results format.

    Args:
        prediction: a :class:`mask2former.VideoPrediction` (``track_masks``, ``num_frames``,
            scores, classes, class_names).
        json_path: the file to write.
        video_id: the ``video_id`` of every entry.
        metadata: the data set's metadata, to translate category ids.

    Each entry: ``video_id``, ``category_id``, ``category_name``, ``score`` and
    ``segmentations``, one RLE (str ``counts``) per frame, None where the track is empty.
    """
    to_dataset_id = contiguous_to_dataset_ids(metadata)
    entries = []
    for index in range(len(prediction)):
        contiguous_id = int(prediction.classes[index])
        segmentations = []  # a few frames at a time: a long video's masks need not fit
        for start in range(0, prediction.num_frames, _ENCODED_FRAMES):
            masks = prediction.track_masks(index, start, start + _ENCODED_FRAMES)
            segmentations.extend(encode_video_masks(masks))
        entries.append(
            {
                "video_id": video_id,
                "category_id": to_dataset_id.get(contiguous_id, contiguous_id),
                "category_name": prediction.class_names[index],
                "score": float(prediction.scores[index]),
                "segmentations": segmentations,
            }
        )
    _write_json(json_path, entries)


def write_semantic(result: SemanticResult, png_path: str) -> None:
    """Write the label map as a single-channel PNG of contiguous class indices."""
    dtype = np.uint8 if len(result.class_names) <= 256 else np.uint16
    _write_png(png_path, result.label_map.astype(dtype))


def write_prediction(
    prediction: Prediction, folder: str, stem: str, *, metadata: Optional[Metadata] = None
) -> List[str]:
    """Write every result a prediction holds, as ``FOLDER/STEM`` + :data:`RESULT_FILE_SUFFIXES`.

    Args:
        prediction: the image's prediction; the results it lacks are not written.
        folder: an existing folder.
        stem: the image's name without extension; also the ``image_id`` in the JSON files.
        metadata: the data set's metadata, to translate category ids.

    Returns:
        The paths written: panoptic PNG and JSON, instances JSON, semantic PNG (those present).
    """
    paths = {
        key: os.path.join(folder, stem + suffix) for key, suffix in RESULT_FILE_SUFFIXES.items()
    }
    written = []
    if prediction.panoptic is not None:
        write_panoptic(
            prediction.panoptic,
            paths["panoptic_png"],
            paths["panoptic_json"],
            image_id=stem,
            metadata=metadata,
        )
        written += [paths["panoptic_png"], paths["panoptic_json"]]
    if prediction.instances is not None:
        write_instances(
            prediction.instances, paths["instances_json"], image_id=stem, metadata=metadata
        )
        written.append(paths["instances_json"])
    if prediction.semantic is not None:
        write_semantic(prediction.semantic, paths["semantic_png"])
        written.append(paths["semantic_png"])
    return written
