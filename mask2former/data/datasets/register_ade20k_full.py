"""Register ADE20K-full semantic segmentation (847 classes): ``ade20k_full_sem_seg_{train,val}``.

Layout under ``$DETECTRON2_DATASETS/ADE20K_2021_17_01`` (written by
``datasets/prepare_ade20k_full_sem_seg.py`` from the raw ADE20K release):
``images_detectron2/{training,validation}/*.jpg``,
``annotations_detectron2/{training,validation}/*.tif`` (uint16, 65535 = ignore) and
``ade20k_full_categories.json`` (the class names, read from the release's own index).
"""

import json
import os

from .catalog_utils import get_datasets_root, require_paths, set_file_category_metadata
from .register_custom import register_sem_seg_loader

__all__ = ["register_all_ade20k_full", "ADE20K_FULL_CATEGORIES_FILE", "ADE20K_FULL_IGNORE_LABEL"]

ADE20K_FULL_CATEGORIES_FILE = "ade20k_full_categories.json"
ADE20K_FULL_IGNORE_LABEL = 65535
_PREPARE_HINT = (
    "download the ADE20K release ADE20K_2021_17_01 into DETECTRON2_DATASETS, then run "
    "python datasets/prepare_ade20k_full_sem_seg.py"
)


def _category_loader(name: str, root: str):
    def load():
        path = os.path.join(root, ADE20K_FULL_CATEGORIES_FILE)
        require_paths(name, [path], _PREPARE_HINT)
        with open(path) as f:
            categories = json.load(f)
        return {"stuff_classes": [c["name"] for c in categories]}

    return load


def register_all_ade20k_full(datasets_root: str) -> None:
    """Register both splits rooted at ``datasets_root/ADE20K_2021_17_01``."""
    root = os.path.join(datasets_root, "ADE20K_2021_17_01")
    for split, dirname in (("train", "training"), ("val", "validation")):
        name = f"ade20k_full_sem_seg_{split}"
        image_root = os.path.join(root, "images_detectron2", dirname)
        sem_seg_root = os.path.join(root, "annotations_detectron2", dirname)
        register_sem_seg_loader(
            name,
            image_root=image_root,
            sem_seg_root=sem_seg_root,
            prepare_hint=_PREPARE_HINT,
            gt_ext="tif",
        )
        set_file_category_metadata(
            name,
            _category_loader(name, root),
            image_root=image_root,
            sem_seg_root=sem_seg_root,
            evaluator_type="sem_seg",
            ignore_label=ADE20K_FULL_IGNORE_LABEL,
        )


register_all_ade20k_full(get_datasets_root())
