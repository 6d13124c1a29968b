"""Transformer decoders: queries + multi-scale features -> class and mask predictions."""

from . import masked_attention as _masked_attention  # noqa: F401  (only registration)
from . import video_masked_attention as _video_masked_attention  # noqa: F401  (only registration)
from .build import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder"]
