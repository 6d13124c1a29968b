"""Register COCO-Stuff-10k semantic segmentation: ``coco_2017_{train,test}_stuff_10k_sem_seg``.

171 classes: COCO's 80 things (detectron2's ``COCO_CATEGORIES``) then the 91 COCO-Stuff
stuff classes (``metadata/coco_stuff_stuff_categories.json``), in COCO-Stuff id order.
Layout under ``$DETECTRON2_DATASETS/coco/coco_stuff_10k``:
``images_detectron2/{train,test}/*.jpg`` and ``annotations_detectron2/{train,test}/*.png``
(written by ``datasets/prepare_coco_stuff_10k_sem_seg.py``).
"""

import os
from typing import Dict, List

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .catalog_utils import get_datasets_root, load_package_categories
from .register_custom import register_sem_seg_loader

__all__ = ["coco_stuff_171_categories", "register_all_coco_stuff_10k"]

_PREPARE_HINT = (
    "download cocostuff-10k-v1.1.zip into DETECTRON2_DATASETS/coco/coco_stuff_10k, unzip it, "
    "then run python datasets/prepare_coco_stuff_10k_sem_seg.py"
)


def coco_stuff_171_categories() -> List[Dict]:
    """The 171 COCO-Stuff categories (id, name, isthing, color), label value = list index."""
    things = [
        {k: c[k] for k in ("id", "name", "isthing", "color")}
        for c in COCO_CATEGORIES
        if c["isthing"]
    ]
    return things + load_package_categories("coco_stuff_stuff_categories.json")


def register_all_coco_stuff_10k(datasets_root: str) -> None:
    """Register both splits rooted at ``datasets_root/coco/coco_stuff_10k``."""
    root = os.path.join(datasets_root, "coco", "coco_stuff_10k")
    categories = coco_stuff_171_categories()
    for split in ("train", "test"):
        name = f"coco_2017_{split}_stuff_10k_sem_seg"
        image_root = os.path.join(root, "images_detectron2", split)
        sem_seg_root = os.path.join(root, "annotations_detectron2", split)
        register_sem_seg_loader(
            name, image_root=image_root, sem_seg_root=sem_seg_root, prepare_hint=_PREPARE_HINT
        )
        MetadataCatalog.get(name).set(
            image_root=image_root,
            sem_seg_root=sem_seg_root,
            evaluator_type="sem_seg",
            ignore_label=255,
            stuff_classes=[c["name"] for c in categories],
            stuff_colors=[c["color"] for c in categories],
        )


register_all_coco_stuff_10k(get_datasets_root())
