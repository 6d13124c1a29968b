"""Register ``coco_2017_{train,val}_panoptic_with_sem_seg``: COCO panoptic with semantic PNGs.

Layout under ``$DETECTRON2_DATASETS/coco``: ``{train,val}2017/`` images,
``panoptic_{train,val}2017/`` PNGs, ``annotations/panoptic_{train,val}2017.json``,
``annotations/instances_{train,val}2017.json`` and ``panoptic_semseg_{train,val}2017/``
(written by ``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py``).
The 133 categories share one contiguous id range (see :func:`panoptic_category_metadata`).
"""

import os

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .catalog_utils import get_datasets_root, panoptic_category_metadata
from .register_custom import register_panoptic_loader

__all__ = ["register_all_coco_panoptic_annos_sem_seg"]

_PREPARE_HINT = (
    "download the COCO 2017 images and panoptic annotations from https://cocodataset.org into "
    "DETECTRON2_DATASETS/coco, then run "
    "python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py"
)


def register_all_coco_panoptic_annos_sem_seg(datasets_root: str) -> None:
    """Register both splits rooted at ``datasets_root/coco``."""
    root = os.path.join(datasets_root, "coco")
    meta = panoptic_category_metadata(COCO_CATEGORIES)
    for split in ("train", "val"):
        name = f"coco_2017_{split}_panoptic_with_sem_seg"
        paths = {
            "image_root": os.path.join(root, f"{split}2017"),
            "panoptic_root": os.path.join(root, f"panoptic_{split}2017"),
            "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}2017.json"),
            "sem_seg_root": os.path.join(root, f"panoptic_semseg_{split}2017"),
        }
        register_panoptic_loader(name, prepare_hint=_PREPARE_HINT, **paths)
        MetadataCatalog.get(name).set(
            json_file=os.path.join(root, "annotations", f"instances_{split}2017.json"),
            evaluator_type="coco_panoptic_seg",
            ignore_label=255,
            label_divisor=1000,
            **paths,
            **meta,
        )


register_all_coco_panoptic_annos_sem_seg(get_datasets_root())
