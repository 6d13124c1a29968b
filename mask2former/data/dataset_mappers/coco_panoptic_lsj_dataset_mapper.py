"""``coco_panoptic_lsj``: panoptic masks with large-scale jittering."""

from typing import Dict, List

from detectron2.config import CfgNode

from .augmentations import build_lsj_augmentations
from .build import MASK_FORMER_MAPPER_REGISTRY
from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper

__all__ = ["COCOPanopticLSJDatasetMapper"]


@MASK_FORMER_MAPPER_REGISTRY.register()
class COCOPanopticLSJDatasetMapper(MaskFormerPanopticDatasetMapper):
    """:class:`MaskFormerPanopticDatasetMapper` with large-scale jittering instead of the
    resize/crop augmentations: every training image comes out IMAGE_SIZE x IMAGE_SIZE, padded
    pixels flagged in "padding_mask" (void in the panoptic map, ignore label in "sem_seg")."""

    # INPUT.DATASET_MAPPER_NAME of the official configs
    dataset_mapper_name = "coco_panoptic_lsj"
    # the metadata that lists the classes of MODEL.SEM_SEG_HEAD.NUM_CLASSES
    class_names_key = "stuff_classes"

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        ret = super().from_config(cfg, is_train)
        # the fixed-size crop already pads; INPUT.SIZE_DIVISIBILITY is for the resize/crop mappers
        ret["size_divisibility"] = -1
        return ret

    @classmethod
    def _build_augmentations(cls, cfg: CfgNode, ignore_label: int) -> List:
        return build_lsj_augmentations(cfg, ignore_label=ignore_label)
