"""Register the synthetic video set (:mod:`mask2former.data.synthetic_video`):
``shapes_video_{train,val}``, rooted at ``$DETECTRON2_DATASETS/shapes_video``, evaluator_type
"ytvis", both with ground truth. Loading either generates the set when it is missing."""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..synthetic_video import (
    SHAPES_VIDEO_CATEGORIES,
    ensure_synthetic_video_dataset,
    synthetic_video_split_paths,
)
from .catalog_utils import get_datasets_root
from .ytvis import load_ytvis_json

__all__ = ["register_all_shapes_video"]


def register_all_shapes_video(datasets_root: str) -> None:
    """Register both splits rooted at ``datasets_root/shapes_video``."""
    root = os.path.join(datasets_root, "shapes_video")
    for split in ("train", "val"):
        name = f"shapes_video_{split}"
        paths = synthetic_video_split_paths(root, split)

        def load(name=name, paths=paths):
            ensure_synthetic_video_dataset(root)
            return load_ytvis_json(paths["json_file"], paths["image_root"], name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            json_file=paths["json_file"],
            image_root=paths["image_root"],
            evaluator_type="ytvis",
            thing_classes=[c["name"] for c in SHAPES_VIDEO_CATEGORIES],
            thing_colors=[c["color"] for c in SHAPES_VIDEO_CATEGORIES],
            thing_dataset_id_to_contiguous_id={
                c["id"]: i for i, c in enumerate(SHAPES_VIDEO_CATEGORIES)
            },
        )


register_all_shapes_video(get_datasets_root())
