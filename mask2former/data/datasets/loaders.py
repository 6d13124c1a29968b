"""Loaders that turn data set files into detectron2 dataset dicts."""

import json
import os
from typing import Dict, List, Optional

__all__ = ["load_coco_panoptic_json_with_sem_seg"]


def load_coco_panoptic_json_with_sem_seg(
    json_file: str,
    image_dir: str,
    panoptic_dir: str,
    sem_seg_dir: Optional[str],
    meta: Dict,
    *,
    image_ext: str = ".jpg",
) -> List[Dict]:
    """Read a COCO panoptic JSON into dataset dicts.

    Args:
        json_file: COCO panoptic JSON (``annotations`` with ``segments_info``).
        image_dir: folder of the images; an image shares its annotation PNG's stem.
        panoptic_dir: folder of the panoptic PNGs (panopticapi ``id2rgb`` encoding).
        sem_seg_dir: folder of semantic PNGs with the same stems, or None.
        meta: holds ``thing_dataset_id_to_contiguous_id`` and
            ``stuff_dataset_id_to_contiguous_id``; a category in the thing map is a thing
            (the stuff map may list every category, as in
            :func:`~mask2former.data.datasets.catalog_utils.panoptic_category_metadata`).
        image_ext: extension of the images.

    Returns:
        one dict per image with file_name, image_id, height/width (when the JSON has them),
        pan_seg_file_name, sem_seg_file_name (when ``sem_seg_dir``) and segments_info, whose
        category_id is contiguous and which carries ``isthing``.
    """
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    with open(json_file) as f:
        content = json.load(f)
    sizes = {img["id"]: (img.get("height"), img.get("width")) for img in content.get("images", [])}

    dicts = []
    for ann in content["annotations"]:
        stem = os.path.splitext(ann["file_name"])[0]
        segments = []
        for seg in ann["segments_info"]:
            cat = seg["category_id"]
            isthing = cat in thing_map
            if not isthing and cat not in stuff_map:
                raise KeyError(
                    f"{json_file}: category_id {cat} of image {ann['image_id']} is neither in "
                    "thing_dataset_id_to_contiguous_id nor in stuff_dataset_id_to_contiguous_id."
                )
            segments.append(
                dict(seg, category_id=(thing_map if isthing else stuff_map)[cat], isthing=isthing)
            )
        record = {
            "file_name": os.path.join(image_dir, stem + image_ext),
            "image_id": ann["image_id"],
            "pan_seg_file_name": os.path.join(panoptic_dir, ann["file_name"]),
            "segments_info": segments,
        }
        height, width = sizes.get(ann["image_id"], (None, None))
        if height is not None and width is not None:
            record["height"], record["width"] = height, width
        if sem_seg_dir is not None:
            record["sem_seg_file_name"] = os.path.join(sem_seg_dir, stem + ".png")
        dicts.append(record)
    if not dicts:
        raise ValueError(f"{json_file} lists no annotated images.")
    return dicts
