"""``mask_former_instance``: instance masks from COCO-style annotations."""

from typing import Dict, List

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T

from .augmentations import build_mask_former_augmentations
from .base import MaskFormerMapperBase, valid_region
from .build import MASK_FORMER_MAPPER_REGISTRY
from .target_utils import masks_to_instances, transform_segmentations

__all__ = ["MaskFormerInstanceDatasetMapper"]


@MASK_FORMER_MAPPER_REGISTRY.register()
class MaskFormerInstanceDatasetMapper(MaskFormerMapperBase):
    """Reads "annotations" whose "segmentation" is polygons, RLE or a bitmask (crowd
    annotations are skipped). Outputs "image", "instances" (masks emptied by the crop are
    dropped; an image without annotations gives empty Instances) and "padding_mask"."""

    # INPUT.DATASET_MAPPER_NAME of the official configs
    dataset_mapper_name = "mask_former_instance"
    # the metadata that lists the classes of MODEL.SEM_SEG_HEAD.NUM_CLASSES
    class_names_key = "thing_classes"

    @classmethod
    def _build_augmentations(cls, cfg: CfgNode, ignore_label: int) -> List:
        return build_mask_former_augmentations(
            cfg, ignore_label=ignore_label, category_area_crop=False
        )

    def _map(self, dataset_dict: Dict, image: np.ndarray) -> Dict:
        height, width = image.shape[:2]
        annotations = [a for a in dataset_dict.pop("annotations", []) if not a.get("iscrowd", 0)]
        for ann in annotations:
            if "segmentation" not in ann:
                raise ValueError(
                    f"An annotation of {dataset_dict['file_name']} has no 'segmentation': "
                    f"{type(self).__name__} needs mask annotations (polygons, RLE or bitmask)."
                )
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        valid = valid_region(transforms, (height, width))
        masks = transform_segmentations(
            [a["segmentation"] for a in annotations],
            transforms,
            (height, width),
            aug_input.image.shape[:2],
            source=dataset_dict["file_name"],
        )
        masks &= valid
        mask_tensor = torch.from_numpy(masks)
        padded = self._pack(dataset_dict, aug_input.image, valid, {"masks": (mask_tensor, False)})
        dataset_dict["instances"] = masks_to_instances(
            [a["category_id"] for a in annotations],
            padded["masks"],
            tuple(dataset_dict["image"].shape[-2:]),
        )
        return dataset_dict
