"""Augmentation lists built from the config for the dataset mappers."""

from typing import List, Tuple, Union

from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform

__all__ = [
    "build_flip",
    "build_mask_former_augmentations",
    "build_lsj_augmentations",
    "build_test_augmentations",
    "build_video_augmentations",
    "VIDEO_EXTRA_AUGMENTATIONS",
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


# INPUT.AUGMENTATIONS of the video mapper: name -> augmentation (the official video release's
# ranges: intensity factors in [0.9, 1.1]; rotation by -15..15 degrees about a centre drawn in
# the middle fifth of the frame, without expanding the frame).
VIDEO_EXTRA_AUGMENTATIONS = {
    "brightness": lambda: T.RandomBrightness(0.9, 1.1),
    "contrast": lambda: T.RandomContrast(0.9, 1.1),
    "saturation": lambda: T.RandomSaturation(0.9, 1.1),
    "rotation": lambda: T.RandomRotation(
        [-15, 15], expand=False, center=[(0.4, 0.4), (0.6, 0.6)], sample_style="range"
    ),
}
_VIDEO_SAMPLING = ("choice", "range", "choice_by_clip", "range_by_clip")
_VIDEO_FLIPS = ("none", "horizontal", "vertical", "flip_by_clip")


def build_video_augmentations(cfg: CfgNode, is_train: bool) -> List[Tuple[T.Augmentation, bool]]:
    """Augmentations of the video mapper, each with whether it is drawn once per clip (True)
    or once per frame (False).

    Training, in order: random crop (``INPUT.CROP``, on the original frames, as Detectron2's
    ``DatasetMapper`` does), resize of the shortest edge (``INPUT.MIN_SIZE_TRAIN``, capped by
    ``MAX_SIZE_TRAIN``; per clip when ``INPUT.MIN_SIZE_TRAIN_SAMPLING`` ends in "_by_clip", and
    the crop with it), flip (``INPUT.RANDOM_FLIP``: "flip_by_clip" horizontal per clip,
    "horizontal"/"vertical" per frame), then ``INPUT.AUGMENTATIONS``
    (:data:`VIDEO_EXTRA_AUGMENTATIONS`, per clip). Inference: :func:`build_test_augmentations`.

    Raises:
        ValueError: an unknown sampling style, flip or augmentation name; the message names the
            key and the allowed values.
    """
    if not is_train:
        return [(aug, True) for aug in build_test_augmentations(cfg)]
    sampling = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    if sampling not in _VIDEO_SAMPLING:
        raise ValueError(
            f"INPUT.MIN_SIZE_TRAIN_SAMPLING is {sampling!r}; the video mapper takes one of "
            f"{', '.join(_VIDEO_SAMPLING)}."
        )
    resize_by_clip = sampling.endswith("_by_clip")
    augs: List[Tuple[T.Augmentation, bool]] = []
    if cfg.INPUT.CROP.ENABLED:
        augs.append((T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE), resize_by_clip))
    resize = T.ResizeShortestEdge(
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, sampling.replace("_by_clip", "")
    )
    augs.append((resize, resize_by_clip))
    flip = cfg.INPUT.RANDOM_FLIP
    if flip not in _VIDEO_FLIPS:
        raise ValueError(
            f"INPUT.RANDOM_FLIP is {flip!r}; the video mapper takes one of "
            f"{', '.join(_VIDEO_FLIPS)}."
        )
    if flip != "none":
        vertical = flip == "vertical"
        augs.append(
            (T.RandomFlip(horizontal=not vertical, vertical=vertical), flip == "flip_by_clip")
        )
    for name in cfg.INPUT.AUGMENTATIONS:
        if name not in VIDEO_EXTRA_AUGMENTATIONS:
            raise ValueError(
                f"INPUT.AUGMENTATIONS names {name!r}; the known augmentations are "
                f"{', '.join(VIDEO_EXTRA_AUGMENTATIONS)}."
            )
        augs.append((VIDEO_EXTRA_AUGMENTATIONS[name](), True))
    return augs
