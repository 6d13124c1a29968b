"""The transformer decoder registry."""

from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder"]

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Registry for transformer decoders: modules that turn learnable queries, attending to the
pixel decoder's multi-scale features, into class and mask predictions.

A registered class is built as ``cls(cfg, in_channels)`` (``@configurable``), where
``in_channels`` is the channel count of the multi-scale features, and is called as
``forward(multi_scale_features, mask_features) -> Dict``:

- ``multi_scale_features``: list of maps (N, in_channels, H_l, W_l), lowest resolution first
  (strides 32, 16, 8 for the official models).
- ``mask_features``: (N, MASK_DIM, H / 4, W / 4) per-pixel embeddings.
- returns ``{"pred_logits": (N, Q, K + 1), "pred_masks": (N, Q, H / 4, W / 4) logits,
  "aux_outputs": [{"pred_logits", "pred_masks"}, ...]}`` where K is the number of classes
  (the last logit is "no object") and ``aux_outputs`` holds the earlier predictions, first
  to last.

A video decoder (``VideoMultiScaleMaskedTransformerDecoder``) is called the same way with the
frames of N videos as the batch (N * T maps, the frames of a video consecutive) and returns
"pred_masks" (N, Q, T, H / 4, W / 4), one mask per frame.

The class is chosen by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME.
"""


def build_transformer_decoder(cfg, in_channels: int) -> nn.Module:
    """Builds the decoder named by ``cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels)
