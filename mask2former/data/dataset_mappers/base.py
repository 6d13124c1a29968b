"""What every Mask2Former dataset mapper shares: config reading, image IO, tensor output.

Shapes: H, W image height and width after augmentation and padding.
"""

import copy
import inspect
import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .augmentations import build_test_augmentations
from .target_utils import pad_to_divisibility

__all__ = ["MaskFormerMapperBase", "reads_semantic_map", "valid_region"]

logger = logging.getLogger(__name__)


def _shape_of_all_ones(transform: T.Transform, shape: Tuple[int, int]) -> Optional[Tuple]:
    """The output shape when ``transform`` maps an all-ones map of ``shape`` to an all-ones
    map (a resize, a flip, a crop inside the image); None when it may not."""
    if isinstance(transform, T.ResizeTransform):
        return transform.new_h, transform.new_w
    if isinstance(transform, (T.HFlipTransform, T.VFlipTransform, T.NoOpTransform)):
        return shape
    if isinstance(transform, T.CropTransform):
        x0, y0, w, h = transform.x0, transform.y0, transform.w, transform.h
        if 0 <= x0 and 0 <= y0 and x0 + w <= shape[1] and y0 + h <= shape[0]:
            return h, w
    return None


def valid_region(transforms: T.TransformList, shape: Tuple[int, int]) -> np.ndarray:
    """(H', W') bool map of the output pixels that come from the input image, not padding.

    A map of ones goes through the transforms; while it is all ones, a resize, flip or crop
    only changes its size (resizing it would cost as much as resizing a mask)."""
    ones: Optional[np.ndarray] = None  # None: all ones, of ``shape``
    for transform in transforms.transforms:
        if ones is None:
            new_shape = _shape_of_all_ones(transform, shape)
            if new_shape is not None:
                shape = new_shape
                continue
            ones = np.ones(shape, dtype=np.uint8)
        ones = transform.apply_segmentation(ones)
    if ones is None:
        return np.ones(shape, dtype=bool)
    return ones == 1


def reads_semantic_map(augmentations: T.AugmentationList) -> bool:
    """Whether one of ``augmentations`` chooses its transform from the semantic map (the
    category-area crop does), so the map must be there before augmenting."""
    for augmentation in augmentations.augs:
        names = augmentation.input_args
        if names is None:  # what Detectron2 reads from get_transform's signature
            names = inspect.signature(augmentation.get_transform).parameters
        if "sem_seg" in names:
            return True
    return False


class MaskFormerMapperBase:
    """Reads the image, runs the augmentations and packs the outputs.

    Subclasses implement :meth:`_map` (read and transform the ground truth) and
    :meth:`_build_augmentations` (their training augmentations).

    Output dict (besides the input fields): "image" (3, H, W) uint8 tensor in
    ``INPUT.FORMAT``; "padding_mask" (H, W) bool, True on padded pixels; "instances"
    (Instances with gt_classes (M,) int64, gt_masks BitMasks (M, H, W)); and
    "sem_seg" (H, W) int64 where the mapper has a semantic map. A ground-truth class outside
    [0, num_classes) raises ValueError naming the file (instead of failing in the loss).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List,
        image_format: str,
        ignore_label: int,
        size_divisibility: int,
        num_classes: Optional[int] = None,
    ):
        """
        Args:
            is_train: training (random augmentations) or inference (resize only).
            augmentations: detectron2 augmentations or transforms, applied in order.
            image_format: ``INPUT.FORMAT`` ("BGR" or "RGB").
            ignore_label: semantic label of unlabeled pixels; used to pad semantic maps.
            size_divisibility: pad bottom/right to a multiple of it (<= 0: no padding).
            num_classes: number of classes of the model (``MODEL.SEM_SEG_HEAD.NUM_CLASSES``);
                None skips the check of the ground-truth classes.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        ignore_label = cls.ignore_label_from_config(cfg, is_train)
        if is_train:
            augmentations = cls._build_augmentations(cfg, ignore_label)
        else:
            augmentations = build_test_augmentations(cfg)
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY if is_train else -1,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        }

    @classmethod
    def _build_augmentations(cls, cfg: CfgNode, ignore_label: int) -> List:
        raise NotImplementedError

    @staticmethod
    def ignore_label_from_config(cfg: CfgNode, is_train: bool) -> int:
        """The first data set's ``ignore_label``; ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE`` when its
        metadata has none. A config that disagrees with the data set is logged."""
        config_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        if not names:
            return config_value
        dataset_value = MetadataCatalog.get(names[0]).get("ignore_label", None)
        if dataset_value is None:
            return config_value
        if dataset_value != config_value:
            logger.warning(
                "Data set %r labels unlabeled pixels %d (its metadata's ignore_label), but "
                "MODEL.SEM_SEG_HEAD.IGNORE_VALUE is %d: the mapper ignores %d. Set IGNORE_VALUE "
                "to %d to make the config agree.",
                names[0],
                dataset_value,
                config_value,
                dataset_value,
                dataset_value,
            )
        return dataset_value

    def __call__(self, dataset_dict: Dict) -> Dict:
        """
        Args:
            dataset_dict: one image's metadata in detectron2 dataset format.

        Returns:
            a new dict with the outputs listed in the class docstring.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        mapped = self._map(dataset_dict, image)
        self._check_classes(mapped)
        return mapped

    def _check_classes(self, dataset_dict: Dict) -> None:
        instances = dataset_dict.get("instances")
        if self.num_classes is None or instances is None:
            return
        classes = instances.gt_classes
        outside = sorted(set(classes[(classes < 0) | (classes >= self.num_classes)].tolist()))
        if outside:
            raise ValueError(
                f"{dataset_dict['file_name']}: ground-truth classes {outside} "
                f"are outside 0..{self.num_classes - 1} (MODEL.SEM_SEG_HEAD.NUM_CLASSES = "
                f"{self.num_classes}). Does the config's number of classes match the data set, "
                f"and is every label value a class or the ignore label {self.ignore_label}?"
            )

    def _map(self, dataset_dict: Dict, image: np.ndarray) -> Dict:
        raise NotImplementedError

    def _pack(
        self,
        dataset_dict: Dict,
        image: np.ndarray,
        valid: np.ndarray,
        targets: Optional[Dict[str, Tuple[torch.Tensor, int]]] = None,
    ) -> Dict[str, torch.Tensor]:
        """Convert to tensors, pad, and store "image" and "padding_mask" in ``dataset_dict``.

        Args:
            image: (H, W, 3) augmented image.
            valid: (H, W) bool, False where an augmentation padded.
            targets: name -> ((..., H, W) tensor, pad value) padded like the image.

        Returns:
            the padded targets by name.
        """
        image_tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        targets = dict(targets or {})
        targets["padding_mask"] = (torch.as_tensor(~valid), True)
        image_tensor, padded = pad_to_divisibility(image_tensor, self.size_divisibility, targets)
        dataset_dict["image"] = image_tensor
        dataset_dict["padding_mask"] = padded.pop("padding_mask")
        return padded
