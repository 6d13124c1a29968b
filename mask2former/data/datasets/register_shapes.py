"""Register the synthetic "shapes" data set (see :mod:`mask2former.data.synthetic`).

Names, rooted at ``$DETECTRON2_DATASETS/shapes``:

- ``shapes_{train,val}``: instance segmentation (COCO JSON, evaluator_type "coco"),
  4 thing classes.
- ``shapes_{train,val}_panoptic``: panoptic segmentation with semantic PNGs, in the
  convention of ``coco_2017_*_panoptic_with_sem_seg`` (evaluator_type "coco_panoptic_seg"),
  7 classes with contiguous ids shared between things and stuff.
- ``shapes_{train,val}_sem_seg``: semantic segmentation (evaluator_type "sem_seg"), 7 classes.

Loading any of them generates the set with the default parameters when it is missing.
"""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg

from ..synthetic import (
    IGNORE_LABEL,
    LABEL_DIVISOR,
    SHAPES_CATEGORIES,
    ensure_synthetic_dataset,
    synthetic_split_paths,
)
from .catalog_utils import get_datasets_root, panoptic_category_metadata
from .loaders import load_coco_panoptic_json_with_sem_seg

__all__ = ["register_all_shapes", "SHAPES_SPLITS"]

SHAPES_SPLITS = ("train", "val")


def _instance_metadata():
    things = [c for c in SHAPES_CATEGORIES if c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
    }


def _load_instances(root: str, split: str, name: str):
    ensure_synthetic_dataset(root)
    paths = synthetic_split_paths(root, split)
    return load_coco_json(paths["instances_json"], paths["image_root"], name)


def _load_panoptic(root: str, split: str, name: str):
    ensure_synthetic_dataset(root)
    paths = synthetic_split_paths(root, split)
    meta = MetadataCatalog.get(name).as_dict()
    return load_coco_panoptic_json_with_sem_seg(
        paths["panoptic_json"],
        paths["image_root"],
        paths["panoptic_root"],
        paths["sem_seg_root"],
        meta,
    )


def _load_sem_seg(root: str, split: str):
    ensure_synthetic_dataset(root)
    paths = synthetic_split_paths(root, split)
    return load_sem_seg(paths["sem_seg_root"], paths["image_root"], gt_ext="png", image_ext="jpg")


def register_all_shapes(datasets_root: str) -> None:
    """Register the synthetic set's instance, panoptic and semantic views for both splits."""
    root = os.path.join(datasets_root, "shapes")
    panoptic_meta = panoptic_category_metadata(SHAPES_CATEGORIES)
    for split in SHAPES_SPLITS:
        paths = synthetic_split_paths(root, split)

        name = f"shapes_{split}"
        DatasetCatalog.register(name, lambda s=split, n=name: _load_instances(root, s, n))
        MetadataCatalog.get(name).set(
            json_file=paths["instances_json"],
            image_root=paths["image_root"],
            evaluator_type="coco",
            **_instance_metadata(),
        )

        name = f"shapes_{split}_panoptic"
        DatasetCatalog.register(name, lambda s=split, n=name: _load_panoptic(root, s, n))
        MetadataCatalog.get(name).set(
            image_root=paths["image_root"],
            panoptic_root=paths["panoptic_root"],
            panoptic_json=paths["panoptic_json"],
            sem_seg_root=paths["sem_seg_root"],
            json_file=paths["instances_json"],
            evaluator_type="coco_panoptic_seg",
            ignore_label=IGNORE_LABEL,
            label_divisor=LABEL_DIVISOR,
            **panoptic_meta,
        )

        name = f"shapes_{split}_sem_seg"
        DatasetCatalog.register(name, lambda s=split: _load_sem_seg(root, s))
        MetadataCatalog.get(name).set(
            image_root=paths["image_root"],
            sem_seg_root=paths["sem_seg_root"],
            evaluator_type="sem_seg",
            ignore_label=IGNORE_LABEL,
            stuff_classes=panoptic_meta["stuff_classes"],
            stuff_colors=panoptic_meta["stuff_colors"],
        )


register_all_shapes(get_datasets_root())
