"""Register ADE20K instance segmentation (100 thing classes): ``ade20k_instance_{train,val}``.

Layout under ``$DETECTRON2_DATASETS/ADEChallengeData2016``: ``images/{training,validation}/``
and ``ade20k_instance_{train,val}.json`` (COCO format, written by
``datasets/prepare_ade20k_ins_seg.py``; category id = the class's ADE20K-150 index - 1).
"""

import json
import os

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import load_coco_json

from .catalog_utils import get_datasets_root, require_paths, set_file_category_metadata

__all__ = ["register_all_ade20k_instance"]

_PREPARE_HINT = (
    "download ADEChallengeData2016 and the ADE20K instance annotations into "
    "DETECTRON2_DATASETS, then run python datasets/prepare_ade20k_ins_seg.py"
)


def _category_loader(name: str, json_file: str):
    def load():
        require_paths(name, [json_file], _PREPARE_HINT)
        with open(json_file) as f:
            categories = sorted(json.load(f)["categories"], key=lambda c: c["id"])
        return {
            "thing_classes": [c["name"] for c in categories],
            "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
        }

    return load


def register_all_ade20k_instance(datasets_root: str) -> None:
    """Register both splits rooted at ``datasets_root/ADEChallengeData2016``."""
    root = os.path.join(datasets_root, "ADEChallengeData2016")
    for split, dirname in (("train", "training"), ("val", "validation")):
        name = f"ade20k_instance_{split}"
        image_root = os.path.join(root, "images", dirname)
        json_file = os.path.join(root, f"ade20k_instance_{split}.json")

        def load(name=name, image_root=image_root, json_file=json_file):
            require_paths(name, [json_file, image_root], _PREPARE_HINT)
            return load_coco_json(json_file, image_root, name)

        DatasetCatalog.register(name, load)
        set_file_category_metadata(
            name,
            _category_loader(name, json_file),
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
        )


register_all_ade20k_instance(get_datasets_root())
