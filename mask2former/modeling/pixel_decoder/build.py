"""The pixel decoder registry."""

from typing import Dict

from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["PIXEL_DECODER_REGISTRY", "build_pixel_decoder"]

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Registry for pixel decoders: modules that turn backbone features into per-pixel embeddings
and multi-scale features for the transformer decoder.

A registered class is built as ``cls(cfg, input_shape)`` (``@configurable``), where
``input_shape`` maps backbone feature names ("res2" ... "res5") to ShapeSpecs, and is called
as ``forward(features: Dict[str, Tensor]) -> Tuple[Tensor, List[Tensor]]``:

- ``features``: backbone maps, "resK" of shape (N, C_K, H / 2^K, W / 2^K).
- returns ``mask_features`` (N, MODEL.SEM_SEG_HEAD.MASK_DIM, H / 4, W / 4), the per-pixel
  embeddings that the query embeddings are dotted with, and ``multi_scale_features``, a list
  of 3 maps (N, MODEL.SEM_SEG_HEAD.CONVS_DIM, ...) at strides 32, 16, 8 (lowest resolution
  first), the memory of the transformer decoder.

The class is chosen by MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME.
"""


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Builds the pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    return PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)
