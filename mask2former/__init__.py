"""Mask2Former for Detectron2.

Importing the package registers every module (backbones, pixel decoders, transformer
decoders, head, meta-architecture), every data set and every dataset mapper with
Detectron2's registries. Call :func:`add_maskformer2_config` on a config (or use
:func:`mask2former.config.load_config`) before merging an official YAML file into it.
"""

from . import data as _data  # noqa: F401  (registers data sets and mappers)
from . import modeling as _modeling  # noqa: F401  (registers models)
from .config import add_maskformer2_config, load_config
from .predictor import Predictor
from .video_predictor import VideoPrediction, VideoPredictor

__all__ = [
    "Predictor",
    "VideoPrediction",
    "VideoPredictor",
    "add_maskformer2_config",
    "load_config",
]
