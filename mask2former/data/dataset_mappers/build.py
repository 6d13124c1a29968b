"""The dataset-mapper registry and its builder."""

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

__all__ = [
    "MASK_FORMER_MAPPER_REGISTRY",
    "VIDEO_MAPPER_NAME",
    "build_dataset_mapper",
    "dataset_mapper_class",
    "is_video_config",
]

MASK_FORMER_MAPPER_REGISTRY = Registry("MASK_FORMER_MAPPER")
MASK_FORMER_MAPPER_REGISTRY.__doc__ = """
Registry for dataset mappers, chosen by ``INPUT.DATASET_MAPPER_NAME``.

Classes are registered under their class name (``@MASK_FORMER_MAPPER_REGISTRY.register()``).
``INPUT.DATASET_MAPPER_NAME`` names one by that name or by the short name it declares in a
``dataset_mapper_name`` class attribute (the official configs' "mask_former_semantic",
"coco_panoptic_lsj", ...).

A registered object is called as ``mapper = obj(cfg, is_train)`` and the mapper as
``mapper(dataset_dict) -> dict``: it reads one image's files and returns the model input
("image" (3, H, W) uint8 tensor, "instances" with gt_classes and gt_masks, "sem_seg" where
applicable, "padding_mask"); the video mapper ("ytvis", :class:`YTVISDatasetMapper`) maps
one video's dict to a clip, with lists of T frames under "image" and "instances".

A ``class_names_key`` class attribute names the metadata field that lists the classes a
mapper trains on ("thing_classes" or "stuff_classes"), with which
``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` is checked (:mod:`mask2former.data.num_classes`).
"""


# Meta-architectures whose inputs are video clips, not images.
_VIDEO_META_ARCHITECTURES = ("VideoMaskFormer",)
# The mapper of the video models, in training and inference: the official video configs leave
# INPUT.DATASET_MAPPER_NAME at its (image) default.
VIDEO_MAPPER_NAME = "ytvis"


def is_video_config(cfg: CfgNode) -> bool:
    """Whether ``cfg``'s model takes videos (``MODEL.META_ARCHITECTURE`` "VideoMaskFormer")."""
    return cfg.MODEL.META_ARCHITECTURE in _VIDEO_META_ARCHITECTURES


def _names(registered_name: str, mapper_class) -> tuple:
    """The names a registered mapper answers to: its registry name and its own short name."""
    return registered_name, vars(mapper_class).get("dataset_mapper_name", registered_name)


def build_dataset_mapper(cfg: CfgNode, is_train: bool = True):
    """Build the mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``; for a video model
    (:func:`is_video_config`) the video mapper, whatever that key says.

    Raises:
        KeyError: when no mapper has that name; the message lists the registered ones.
    """
    return dataset_mapper_class(cfg)(cfg, is_train)


def dataset_mapper_class(cfg: CfgNode) -> type:
    """The class :func:`build_dataset_mapper` builds (a KeyError when none has the name)."""
    name = VIDEO_MAPPER_NAME if is_video_config(cfg) else cfg.INPUT.DATASET_MAPPER_NAME
    for registered_name, mapper_class in MASK_FORMER_MAPPER_REGISTRY:
        if name in _names(registered_name, mapper_class):
            return mapper_class
    known = ", ".join(sorted(_names(*entry)[-1] for entry in MASK_FORMER_MAPPER_REGISTRY))
    raise KeyError(
        f"INPUT.DATASET_MAPPER_NAME is {name!r}, which is not a registered dataset mapper. "
        f"Registered mappers: {known}."
    )
