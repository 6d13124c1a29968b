"""Data: registered data sets, the synthetic image and video sets and the dataset mappers.

Importing this package registers every data set name with detectron2's catalogs and every
dataset mapper with :data:`MASK_FORMER_MAPPER_REGISTRY`.
"""

from . import datasets as _datasets  # noqa: F401  only registration
from .dataset_mappers import MASK_FORMER_MAPPER_REGISTRY, build_dataset_mapper, is_video_config
from .num_classes import NumClassesError, check_num_classes
from .synthetic import SyntheticConfig, ensure_synthetic_dataset
from .synthetic_video import SyntheticVideoConfig, ensure_synthetic_video_dataset

__all__ = [
    "MASK_FORMER_MAPPER_REGISTRY",
    "build_dataset_mapper",
    "is_video_config",
    "NumClassesError",
    "check_num_classes",
    "SyntheticConfig",
    "ensure_synthetic_dataset",
    "SyntheticVideoConfig",
    "ensure_synthetic_video_dataset",
]
