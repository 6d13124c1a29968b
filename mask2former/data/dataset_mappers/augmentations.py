"""Augmentation lists built from the config for the dataset mappers."""

from typing import List, Union

from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform

__all__ = [
    "build_flip",
    "build_mask_former_augmentations",
    "build_lsj_augmentations",
    "build_test_augmentations",
]

AugOrTransform = Union[T.Augmentation, T.Transform]


def build_flip(cfg: CfgNode) -> List[T.Augmentation]:
    """Random flip as ``INPUT.RANDOM_FLIP`` says ("horizontal", "vertical" or "none")."""
    if cfg.INPUT.RANDOM_FLIP == "none":
        return []
    return [
        T.RandomFlip(
            horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
            vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
        )
    ]


def build_mask_former_augmentations(
    cfg: CfgNode, *, ignore_label: int, category_area_crop: bool
) -> List[AugOrTransform]:
    """Training augmentations of the ``mask_former_*`` mappers.

    Resize the shortest edge (``INPUT.MIN_SIZE_TRAIN`` sampled by
    ``INPUT.MIN_SIZE_TRAIN_SAMPLING``, capped by ``INPUT.MAX_SIZE_TRAIN``), random crop
    (``INPUT.CROP``; with ``category_area_crop`` retried until no category covers more than
    ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA`` of it), SSD colour jitter when
    ``INPUT.COLOR_AUG_SSD``, random flip.

    Args:
        cfg: config with the keys of ``add_maskformer2_config``.
        ignore_label: category excluded from the crop's area constraint.
        category_area_crop: use the area-constrained crop (needs a semantic map in the input).
    """
    augs: List[AugOrTransform] = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        if category_area_crop:
            augs.append(
                T.RandomCrop_CategoryAreaConstraint(
                    cfg.INPUT.CROP.TYPE,
                    cfg.INPUT.CROP.SIZE,
                    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                    ignore_label,
                )
            )
        else:
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    return augs + build_flip(cfg)


def build_lsj_augmentations(cfg: CfgNode, *, ignore_label: int) -> List[T.Augmentation]:
    """Large-scale jittering: flip, rescale ``INPUT.IMAGE_SIZE`` by a factor drawn from
    [``INPUT.MIN_SCALE``, ``INPUT.MAX_SCALE``], then crop/pad to IMAGE_SIZE x IMAGE_SIZE
    (segmentation padding uses ``ignore_label``)."""
    size = cfg.INPUT.IMAGE_SIZE
    return build_flip(cfg) + [
        T.ResizeScale(
            min_scale=cfg.INPUT.MIN_SCALE,
            max_scale=cfg.INPUT.MAX_SCALE,
            target_height=size,
            target_width=size,
        ),
        T.FixedSizeCrop(crop_size=(size, size), seg_pad_value=ignore_label),
    ]


def build_test_augmentations(cfg: CfgNode) -> List[T.Augmentation]:
    """Inference resize: shortest edge to ``INPUT.MIN_SIZE_TEST``, capped by MAX_SIZE_TEST."""
    return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
