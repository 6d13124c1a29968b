"""Register ADE20K-150 panoptic segmentation: ``ade20k_panoptic_{train,val}``.

Layout under ``$DETECTRON2_DATASETS/ADEChallengeData2016`` (written by
``datasets/prepare_ade20k_sem_seg.py`` and ``datasets/prepare_ade20k_pan_seg.py``):
``images/{training,validation}/``, ``annotations_detectron2/{training,validation}/``,
``ade20k_panoptic_{train,val}/`` PNGs, ``ade20k_panoptic_{train,val}.json`` and
``ade20k_panoptic_categories.json`` (the 150 classes with ``isthing``, derived from the ADE20K
instance challenge's category mapping). Contiguous id = the class's ADE20K-150 index - 1.
"""

import json
import os

from .catalog_utils import (
    get_datasets_root,
    panoptic_category_metadata,
    require_paths,
    set_file_category_metadata,
)
from .register_custom import register_panoptic_loader

__all__ = ["register_all_ade20k_panoptic", "ADE20K_PANOPTIC_CATEGORIES_FILE"]

ADE20K_PANOPTIC_CATEGORIES_FILE = "ade20k_panoptic_categories.json"
_PREPARE_HINT = (
    "download ADEChallengeData2016 and the ADE20K instance annotations into "
    "DETECTRON2_DATASETS, then run python datasets/prepare_ade20k_sem_seg.py and "
    "python datasets/prepare_ade20k_pan_seg.py"
)


def _category_loader(name: str, root: str):
    def load():
        path = os.path.join(root, ADE20K_PANOPTIC_CATEGORIES_FILE)
        require_paths(name, [path], _PREPARE_HINT)
        with open(path) as f:
            return panoptic_category_metadata(json.load(f))

    return load


def register_all_ade20k_panoptic(datasets_root: str) -> None:
    """Register both splits rooted at ``datasets_root/ADEChallengeData2016``."""
    root = os.path.join(datasets_root, "ADEChallengeData2016")
    for split, dirname in (("train", "training"), ("val", "validation")):
        name = f"ade20k_panoptic_{split}"
        paths = {
            "image_root": os.path.join(root, "images", dirname),
            "panoptic_root": os.path.join(root, f"ade20k_panoptic_{split}"),
            "panoptic_json": os.path.join(root, f"ade20k_panoptic_{split}.json"),
            "sem_seg_root": os.path.join(root, "annotations_detectron2", dirname),
        }
        register_panoptic_loader(name, prepare_hint=_PREPARE_HINT, **paths)
        set_file_category_metadata(
            name,
            _category_loader(name, root),
            json_file=os.path.join(root, f"ade20k_instance_{split}.json"),
            evaluator_type="ade20k_panoptic_seg",
            ignore_label=255,
            label_divisor=1000,
            **paths,
        )


register_all_ade20k_panoptic(get_datasets_root())
