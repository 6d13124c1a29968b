"""``mask_former_panoptic``: one mask per panoptic segment, things and stuff alike."""

from typing import Dict, List

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from panopticapi.utils import rgb2id

from .augmentations import build_mask_former_augmentations
from .base import MaskFormerMapperBase, reads_semantic_map, valid_region
from .build import MASK_FORMER_MAPPER_REGISTRY
from .target_utils import (
    panoptic_to_instances,
    semantic_from_instances,
    semantic_from_panoptic,
)

__all__ = ["MaskFormerPanopticDatasetMapper"]


@MASK_FORMER_MAPPER_REGISTRY.register()
class MaskFormerPanopticDatasetMapper(MaskFormerMapperBase):
    """Reads "pan_seg_file_name" (panopticapi RGB ids) and "segments_info" (contiguous
    category ids). Outputs "image", "instances" (one mask per non-crowd segment still visible
    after augmentation), "sem_seg" (from "sem_seg_file_name", else the classes of the augmented
    panoptic map, void and crowd = ignore label) and "padding_mask". Raises ValueError when the
    PNG's pixels that remain after augmentation carry ids that "segments_info" does not list."""

    # INPUT.DATASET_MAPPER_NAME of the official configs
    dataset_mapper_name = "mask_former_panoptic"
    # the metadata that lists the classes of MODEL.SEM_SEG_HEAD.NUM_CLASSES
    class_names_key = "stuff_classes"

    @classmethod
    def _build_augmentations(cls, cfg: CfgNode, ignore_label: int) -> List:
        return build_mask_former_augmentations(
            cfg, ignore_label=ignore_label, category_area_crop=True
        )

    def _map(self, dataset_dict: Dict, image: np.ndarray) -> Dict:
        if "pan_seg_file_name" not in dataset_dict:
            if self.is_train:
                raise ValueError(
                    f"The {type(self).__name__} needs 'pan_seg_file_name' and 'segments_info' "
                    f"in the dataset dict of {dataset_dict['file_name']}: train it on a "
                    "panoptic data set."
                )
            aug_input = T.AugInput(image)
            transforms = self.augmentations(aug_input)
            self._pack(dataset_dict, aug_input.image, valid_region(transforms, image.shape[:2]))
            return dataset_dict
        pan_seg_file_name = dataset_dict.pop("pan_seg_file_name")
        pan_rgb = utils.read_image(pan_seg_file_name, "RGB")
        segments_info = dataset_dict["segments_info"]
        sem_seg = None
        sem_seg_from_file = "sem_seg_file_name" in dataset_dict
        if sem_seg_from_file:
            # float64 on purpose: Detectron2 resizes non-uint8 maps with PyTorch's nearest
            # interpolation, which computes source pixels in the map's precision; float32 picks
            # other pixels than the official mappers (tools/benchmark_data_loading.py)
            sem_seg = utils.read_image(dataset_dict.pop("sem_seg_file_name")).astype("double")
        elif reads_semantic_map(self.augmentations):  # the category-area crop
            sem_seg = semantic_from_panoptic(rgb2id(pan_rgb), segments_info, self.ignore_label)
            sem_seg = sem_seg.astype("double")
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        valid = valid_region(transforms, image.shape[:2])
        pan_ids = rgb2id(transforms.apply_segmentation(pan_rgb))
        pan_ids[~valid] = 0
        targets = {"pan_seg": (torch.as_tensor(pan_ids), 0)}
        if sem_seg_from_file:
            sem_seg = torch.as_tensor(aug_input.sem_seg.astype("long"))
            sem_seg[torch.as_tensor(~valid)] = self.ignore_label
            targets["sem_seg"] = (sem_seg, self.ignore_label)
        padded = self._pack(dataset_dict, aug_input.image, valid, targets)
        instances = panoptic_to_instances(
            padded["pan_seg"].numpy(),
            segments_info,
            tuple(padded["pan_seg"].shape),
            source=pan_seg_file_name,
        )
        dataset_dict["instances"] = instances
        if sem_seg_from_file:
            dataset_dict["sem_seg"] = padded["sem_seg"]
        else:  # the augmented panoptic map's classes, pixel for pixel
            dataset_dict["sem_seg"] = semantic_from_instances(instances, self.ignore_label)
        return dataset_dict
