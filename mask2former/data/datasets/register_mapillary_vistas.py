"""Register Mapillary Vistas (v1.2) semantic and panoptic segmentation.

Names: ``mapillary_vistas_sem_seg_{train,val}`` (65 classes, ignore label 65) and
``mapillary_vistas_panoptic_{train,val}``. Layout under
``$DETECTRON2_DATASETS/mapillary_vistas`` (the release as downloaded):
``config.json``, ``{training,validation}/images/*.jpg``, ``{split}/labels/*.png`` (class
index per pixel), ``{split}/panoptic/*.png`` and ``{split}/panoptic/panoptic_2018.json``.
Class names come from the release's ``config.json`` and ``panoptic_2018.json``; no
preparation is needed.
"""

import json
import os

from .catalog_utils import (
    get_datasets_root,
    panoptic_category_metadata,
    require_paths,
    set_file_category_metadata,
)
from .register_custom import register_panoptic_loader, register_sem_seg_loader

__all__ = ["register_all_mapillary_vistas", "MAPILLARY_VISTAS_NUM_CLASSES"]

# 65 evaluated classes; label 65 ("Unlabeled") is ignored.
MAPILLARY_VISTAS_NUM_CLASSES = 65
_PREPARE_HINT = (
    "download Mapillary Vistas v1.2 from https://www.mapillary.com/dataset/vistas and extract "
    "it into DETECTRON2_DATASETS/mapillary_vistas (no conversion needed)"
)


def _semantic_category_loader(name: str, root: str):
    def load():
        path = os.path.join(root, "config.json")
        require_paths(name, [path], _PREPARE_HINT)
        with open(path) as f:
            labels = json.load(f)["labels"]
        if len(labels) <= MAPILLARY_VISTAS_NUM_CLASSES:
            raise ValueError(
                f"{path} lists {len(labels)} labels; Mapillary Vistas v1.2 has "
                f"{MAPILLARY_VISTAS_NUM_CLASSES + 1} (the last one unlabeled)."
            )
        labels = labels[:MAPILLARY_VISTAS_NUM_CLASSES]
        return {
            "stuff_classes": [label["readable"] for label in labels],
            "stuff_colors": [label["color"] for label in labels],
        }

    return load


def _panoptic_category_loader(name: str, panoptic_json: str):
    def load():
        require_paths(name, [panoptic_json], _PREPARE_HINT)
        with open(panoptic_json) as f:
            categories = json.load(f)["categories"]
        return panoptic_category_metadata(categories)

    return load


def register_all_mapillary_vistas(datasets_root: str) -> None:
    """Register the semantic and panoptic views of both splits."""
    root = os.path.join(datasets_root, "mapillary_vistas")
    for split, dirname in (("train", "training"), ("val", "validation")):
        image_root = os.path.join(root, dirname, "images")
        sem_seg_root = os.path.join(root, dirname, "labels")

        name = f"mapillary_vistas_sem_seg_{split}"
        register_sem_seg_loader(
            name, image_root=image_root, sem_seg_root=sem_seg_root, prepare_hint=_PREPARE_HINT
        )
        set_file_category_metadata(
            name,
            _semantic_category_loader(name, root),
            image_root=image_root,
            sem_seg_root=sem_seg_root,
            evaluator_type="sem_seg",
            ignore_label=MAPILLARY_VISTAS_NUM_CLASSES,
        )

        name = f"mapillary_vistas_panoptic_{split}"
        paths = {
            "image_root": image_root,
            "panoptic_root": os.path.join(root, dirname, "panoptic"),
            "panoptic_json": os.path.join(root, dirname, "panoptic", "panoptic_2018.json"),
            "sem_seg_root": sem_seg_root,
        }
        register_panoptic_loader(name, prepare_hint=_PREPARE_HINT, **paths)
        set_file_category_metadata(
            name,
            _panoptic_category_loader(name, paths["panoptic_json"]),
            evaluator_type="mapillary_vistas_panoptic_seg",
            ignore_label=MAPILLARY_VISTAS_NUM_CLASSES,
            label_divisor=1000,
            **paths,
        )


register_all_mapillary_vistas(get_datasets_root())
