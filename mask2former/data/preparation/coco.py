"""COCO conversions: semantic PNGs from panoptic annotations, and COCO-Stuff-10k."""

import json
import os
import shutil
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from .inputs import require_input
from .progress import progress

_STUFF_10K_HOW = (
    "Download cocostuff-10k-v1.1.zip and unzip it into DETECTRON2_DATASETS/coco/coco_stuff_10k."
)

__all__ = [
    "semantic_from_panoptic_png",
    "convert_panoptic_to_semantic",
    "convert_coco_stuff_10k",
]


def semantic_from_panoptic_png(
    pan_rgb: np.ndarray, segments_info: List[Dict], id_map: Dict[int, int], ignore_label: int = 255
) -> np.ndarray:
    """Semantic map of one panoptic annotation.

    Args:
        pan_rgb: (H, W, 3) uint8 panoptic PNG (panopticapi ``id2rgb`` encoding).
        segments_info: the image's segments with JSON "id" and "category_id".
        id_map: JSON category id -> contiguous id written to the output.
        ignore_label: value of pixels in no segment.

    Returns:
        (H, W) uint8 semantic map.
    """
    pan = pan_rgb.astype(np.int64)
    seg_ids = pan[..., 0] + 256 * pan[..., 1] + 256 * 256 * pan[..., 2]
    semantic = np.full(seg_ids.shape, ignore_label, dtype=np.uint8)
    for seg in segments_info:
        semantic[seg_ids == seg["id"]] = id_map[seg["category_id"]]
    return semantic


def convert_panoptic_to_semantic(
    panoptic_json: str,
    panoptic_root: str,
    sem_seg_root: str,
    categories: Optional[List[Dict]] = None,
    *,
    ignore_label: int = 255,
    show_progress: bool = True,
) -> int:
    """Write one semantic PNG per panoptic annotation (same file name).

    The contiguous id of a category is its index in ``categories`` (default: the panoptic
    JSON's own category list), things and stuff alike, as the ``*_panoptic_with_sem_seg``
    registrations expect.

    Returns:
        number of PNGs written.
    """
    how = (
        "Download the panoptic annotations (e.g. COCO's panoptic_annotations_trainval2017.zip "
        "from https://cocodataset.org) and unzip them as datasets/README.md shows."
    )
    require_input(panoptic_json, "Panoptic annotation JSON", how)
    require_input(panoptic_root, "Panoptic PNG folder", how)
    with open(panoptic_json) as f:
        content = json.load(f)
    categories = content["categories"] if categories is None else categories
    if len(categories) > 255:
        raise ValueError(f"{len(categories)} categories do not fit uint8 PNGs.")
    id_map = {c["id"]: i for i, c in enumerate(categories)}
    os.makedirs(sem_seg_root, exist_ok=True)
    annotations = content["annotations"]
    for ann in progress(
        annotations, os.path.basename(sem_seg_root), len(annotations), show_progress
    ):
        pan_rgb = np.asarray(
            Image.open(os.path.join(panoptic_root, ann["file_name"])).convert("RGB")
        )
        semantic = semantic_from_panoptic_png(pan_rgb, ann["segments_info"], id_map, ignore_label)
        Image.fromarray(semantic).save(os.path.join(sem_seg_root, ann["file_name"]))
    return len(annotations)


def convert_coco_stuff_10k(
    root: str, categories: List[Dict], *, ignore_label: int = 255, show_progress: bool = True
) -> Dict[str, int]:
    """Convert the cocostuff-10k-v1.1 release in ``root`` to the detectron2 layout.

    Reads ``imageLists/{train,test}.txt``, ``images/<name>.jpg`` and
    ``annotations/<name>.mat`` (label map "S": 0 unlabeled, else a COCO-Stuff id); writes
    ``images_detectron2/{split}/<name>.jpg`` and ``annotations_detectron2/{split}/<name>.png``
    with label = index of the id in ``categories``, ``ignore_label`` elsewhere.

    Returns:
        number of images per split.
    """
    from scipy.io import loadmat

    id_map = np.full(256, ignore_label, dtype=np.uint8)
    for i, cat in enumerate(categories):
        id_map[cat["id"]] = i
    counts = {}
    for split in ("train", "test"):
        list_file = os.path.join(root, "imageLists", f"{split}.txt")
        require_input(list_file, "COCO-Stuff-10k image list", _STUFF_10K_HOW)
        with open(list_file) as f:
            names = [line.strip() for line in f if line.strip()]
        image_out = os.path.join(root, "images_detectron2", split)
        label_out = os.path.join(root, "annotations_detectron2", split)
        os.makedirs(image_out, exist_ok=True)
        os.makedirs(label_out, exist_ok=True)
        for name in progress(names, f"coco_stuff_10k {split}", len(names), show_progress):
            image_file = os.path.join(root, "images", name + ".jpg")
            mat_file = os.path.join(root, "annotations", name + ".mat")
            require_input(image_file, "COCO-Stuff-10k image", _STUFF_10K_HOW)
            require_input(mat_file, "COCO-Stuff-10k annotation", _STUFF_10K_HOW)
            labels = loadmat(mat_file)["S"].astype(np.int64)
            Image.fromarray(id_map[labels]).save(os.path.join(label_out, name + ".png"))
            shutil.copyfile(image_file, os.path.join(image_out, name + ".jpg"))
        counts[split] = len(names)
    return counts
