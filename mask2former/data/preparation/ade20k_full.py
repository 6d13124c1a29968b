"""ADE20K-full (847 classes) conversion from the ADE20K_2021_17_01 release.

The release holds ``index_ade20k.pkl`` (keys "filename", "folder", "objectnames") and, next to
every image ``<folder>/<name>.jpg``, its class mask ``<name>_seg.png`` whose class index per
pixel is ``R / 10 * 256 + G`` (0 = unlabeled; index i names ``objectnames[i - 1]``).

The 847-class benchmark keeps the classes that occur in both the training and the validation
images; this conversion selects them by that rule from the data (it does not ship a copy of the
official table) and writes their names, in label order, to ``ade20k_full_categories.json``.
Labels are written as uint16 TIFFs, 65535 = ignore.
"""

import json
import os
import pickle
import shutil
from typing import Dict, List, Set

import numpy as np
from PIL import Image

from ..datasets.catalog_utils import DatasetFilesMissingError
from .progress import progress

__all__ = ["decode_ade20k_full_classes", "convert_ade20k_full"]

IGNORE_LABEL = 65535
_SPLITS = ("training", "validation")


def decode_ade20k_full_classes(seg_png: np.ndarray) -> np.ndarray:
    """(H, W) int64 class indices of an ADE20K ``*_seg.png`` (H, W, 3) RGB array."""
    red = seg_png[..., 0].astype(np.int64)
    green = seg_png[..., 1].astype(np.int64)
    return red // 10 * 256 + green


def _load_index(root: str) -> Dict:
    path = os.path.join(root, "index_ade20k.pkl")
    if not os.path.isfile(path):
        raise DatasetFilesMissingError(
            f"{path} does not exist. Download the ADE20K release (ADE20K_2021_17_01.zip from "
            "https://groups.csail.mit.edu/vision/datasets/ADE20K/) and unzip it into "
            "DETECTRON2_DATASETS."
        )
    with open(path, "rb") as f:
        return pickle.load(f)


def _split_files(root: str, index: Dict) -> Dict[str, List[str]]:
    """Image paths per split, from the index's folder/filename lists."""
    parent = os.path.dirname(os.path.abspath(root))
    files = {split: [] for split in _SPLITS}
    for folder, name in zip(index["folder"], index["filename"]):
        for split in _SPLITS:
            if f"/{split}/" in f"/{folder}/":
                path = os.path.join(folder, name)
                files[split].append(path if os.path.isabs(path) else os.path.join(parent, path))
    return files


def _classes_present(paths: List[str], desc: str, show_progress: bool) -> Set[int]:
    present: Set[int] = set()
    for path in progress(paths, desc, len(paths), show_progress):
        seg = np.asarray(Image.open(path[: -len(".jpg")] + "_seg.png").convert("RGB"))
        present.update(int(c) for c in np.unique(decode_ade20k_full_classes(seg)))
    present.discard(0)
    return present


def convert_ade20k_full(root: str, *, show_progress: bool = True) -> int:
    """Write ``images_detectron2/``, ``annotations_detectron2/`` and the categories JSON.

    Args:
        root: the ``ADE20K_2021_17_01`` folder.

    Returns:
        the number of classes kept.
    """
    index = _load_index(root)
    files = _split_files(root, index)
    for split in _SPLITS:
        if not files[split]:
            raise DatasetFilesMissingError(
                f"index_ade20k.pkl in {root} lists no '{split}' images; is the release complete?"
            )
    present = [_classes_present(files[s], f"ade20k-full scan {s}", show_progress) for s in _SPLITS]
    kept = sorted(present[0] & present[1])
    names = index["objectnames"]
    categories = [{"id": c, "name": names[c - 1]} for c in kept]
    lookup = np.full(max(kept) + 1 if kept else 1, IGNORE_LABEL, dtype=np.int64)
    lookup[kept] = np.arange(len(kept))

    for split in _SPLITS:
        image_out = os.path.join(root, "images_detectron2", split)
        label_out = os.path.join(root, "annotations_detectron2", split)
        os.makedirs(image_out, exist_ok=True)
        os.makedirs(label_out, exist_ok=True)
        for path in progress(
            files[split], f"ade20k-full {split}", len(files[split]), show_progress
        ):
            stem = os.path.splitext(os.path.basename(path))[0]
            seg = np.asarray(Image.open(path[: -len(".jpg")] + "_seg.png").convert("RGB"))
            classes = decode_ade20k_full_classes(seg)
            labels = np.full(classes.shape, IGNORE_LABEL, dtype=np.uint16)
            inside = classes < len(lookup)
            labels[inside] = lookup[classes[inside]].astype(np.uint16)
            Image.fromarray(labels).save(os.path.join(label_out, stem + ".tif"))
            shutil.copyfile(path, os.path.join(image_out, stem + ".jpg"))
    with open(os.path.join(root, "ade20k_full_categories.json"), "w") as f:
        json.dump(categories, f, indent=0)
    return len(kept)
