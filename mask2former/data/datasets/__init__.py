"""Data set registrations: importing this package registers every data set name.

Each ``register_*`` module registers its names at import, rooted at ``$DETECTRON2_DATASETS``
(default ``datasets``), without touching the file system. Registering your own data:
:mod:`.register_custom`; your own videos in the YouTube-VIS format:
:func:`.ytvis.register_ytvis_instances`.
"""

from . import register_ade20k_full as _register_ade20k_full  # noqa: F401  only registration
from . import register_ade20k_instance as _register_ade20k_instance  # noqa: F401
from . import register_ade20k_panoptic as _register_ade20k_panoptic  # noqa: F401
from . import register_coco_panoptic_annos_semseg as _register_coco_panoptic  # noqa: F401
from . import register_coco_stuff_10k as _register_coco_stuff_10k  # noqa: F401
from . import register_mapillary_vistas as _register_mapillary_vistas  # noqa: F401
from . import register_shapes as _register_shapes  # noqa: F401
from . import register_shapes_video as _register_shapes_video  # noqa: F401
from . import ytvis as _ytvis  # noqa: F401  registers ytvis_{2019,2021}_*
from .catalog_utils import DatasetFilesMissingError, panoptic_category_metadata
from .register_custom import (
    register_coco_instances_with_checks,
    register_coco_panoptic_with_checks,
    register_sem_seg_folder,
)
from .ytvis import load_ytvis_json, register_ytvis_instances

__all__ = [
    "DatasetFilesMissingError",
    "panoptic_category_metadata",
    "register_coco_instances_with_checks",
    "register_coco_panoptic_with_checks",
    "register_sem_seg_folder",
    "load_ytvis_json",
    "register_ytvis_instances",
]
