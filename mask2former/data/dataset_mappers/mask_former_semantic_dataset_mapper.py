"""``mask_former_semantic``: semantic segmentation targets as one mask per class."""

from typing import Dict, List

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .augmentations import build_mask_former_augmentations
from .base import MaskFormerMapperBase, valid_region
from .build import MASK_FORMER_MAPPER_REGISTRY
from .target_utils import semantic_to_instances

__all__ = ["MaskFormerSemanticDatasetMapper"]


@MASK_FORMER_MAPPER_REGISTRY.register()
class MaskFormerSemanticDatasetMapper(MaskFormerMapperBase):
    """Reads "sem_seg_file_name" and turns every class present (but the ignore label) into
    one mask. Outputs "image", "sem_seg" (H, W) int64 (padding = ignore label), "instances",
    "padding_mask". In training the semantic map is required."""

    # INPUT.DATASET_MAPPER_NAME of the official configs
    dataset_mapper_name = "mask_former_semantic"
    # the metadata that lists the classes of MODEL.SEM_SEG_HEAD.NUM_CLASSES
    class_names_key = "stuff_classes"

    @classmethod
    def _build_augmentations(cls, cfg: CfgNode, ignore_label: int) -> List:
        return build_mask_former_augmentations(
            cfg, ignore_label=ignore_label, category_area_crop=True
        )

    def _map(self, dataset_dict: Dict, image: np.ndarray) -> Dict:
        sem_seg = None
        if "sem_seg_file_name" in dataset_dict:
            # float64 on purpose: Detectron2 resizes non-uint8 maps with PyTorch's nearest
            # interpolation, which computes source pixels in the map's precision; float32 picks
            # other pixels than the official mappers (tools/benchmark_data_loading.py)
            sem_seg = utils.read_image(dataset_dict.pop("sem_seg_file_name")).astype("double")
        elif self.is_train:
            raise ValueError(
                f"The mask_former_semantic mapper needs 'sem_seg_file_name' in the dataset dict "
                f"of {dataset_dict['file_name']}: train it on a semantic segmentation data set."
            )
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        valid = valid_region(transforms, image.shape[:2])
        if aug_input.sem_seg is None:
            self._pack(dataset_dict, aug_input.image, valid)
            return dataset_dict
        sem_seg = torch.as_tensor(aug_input.sem_seg.astype("long"))
        sem_seg[torch.as_tensor(~valid)] = self.ignore_label
        padded = self._pack(
            dataset_dict, aug_input.image, valid, {"sem_seg": (sem_seg, self.ignore_label)}
        )
        dataset_dict["sem_seg"] = padded["sem_seg"]
        dataset_dict["instances"] = semantic_to_instances(padded["sem_seg"], self.ignore_label)
        return dataset_dict
