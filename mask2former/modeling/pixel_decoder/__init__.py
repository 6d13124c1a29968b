"""Pixel decoders: backbone features -> mask features and multi-scale features."""

from . import fpn as _fpn  # noqa: F401  (only registration)
from . import msdeform_attn as _msdeform_attn  # noqa: F401  (only registration)
from .build import PIXEL_DECODER_REGISTRY, build_pixel_decoder

__all__ = ["PIXEL_DECODER_REGISTRY", "build_pixel_decoder"]
