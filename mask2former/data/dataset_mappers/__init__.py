"""Dataset mappers, registered in :data:`MASK_FORMER_MAPPER_REGISTRY` by name."""

from .build import (
    MASK_FORMER_MAPPER_REGISTRY,
    build_dataset_mapper,
    dataset_mapper_class,
    is_video_config,
)
from .coco_instance_lsj_dataset_mapper import COCOInstanceLSJDatasetMapper
from .coco_panoptic_lsj_dataset_mapper import COCOPanopticLSJDatasetMapper
from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper
from .ytvis_dataset_mapper import YTVISDatasetMapper

__all__ = [
    "MASK_FORMER_MAPPER_REGISTRY",
    "build_dataset_mapper",
    "dataset_mapper_class",
    "is_video_config",
    "COCOInstanceLSJDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "YTVISDatasetMapper",
]
