"""The Mask2Former head: a pixel decoder followed by a transformer decoder."""

from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..pixel_decoder.build import build_pixel_decoder
from ..transformer_decoder.build import build_transformer_decoder

__all__ = ["MaskFormerHead"]

# Values of MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE this head supports: the transformer
# decoder reads the pixel decoder's multi-scale features (every official Mask2Former config).
_SUPPORTED_TRANSFORMER_IN_FEATURES = ("multi_scale_pixel_decoder",)


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """Pixel decoder (``pixel_decoder``) then transformer decoder (``predictor``).

    Called as ``forward(features) -> dict``: ``features`` are the backbone maps by name;
    the result is the transformer decoder's dict ("pred_logits" (N, Q, K + 1), "pred_masks"
    (N, Q, H / 4, W / 4), "aux_outputs"), see ``TRANSFORMER_DECODER_REGISTRY``.
    State-dict prefixes ``pixel_decoder.*`` and ``predictor.*`` are the official ones.
    """

    @configurable
    def __init__(self, *, pixel_decoder: nn.Module, transformer_predictor: nn.Module):
        """
        Args:
            pixel_decoder: a module from ``PIXEL_DECODER_REGISTRY``.
            transformer_predictor: a module from ``TRANSFORMER_DECODER_REGISTRY``.
        """
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        transformer_in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        if transformer_in_feature not in _SUPPORTED_TRANSFORMER_IN_FEATURES:
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE={transformer_in_feature!r} is not "
                f"supported by MaskFormerHead; use one of {_SUPPORTED_TRANSFORMER_IN_FEATURES} "
                "(the value of every official Mask2Former config)."
            )
        missing = [name for name in head.IN_FEATURES if name not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES names {missing}, which the backbone does not "
                f"output (it has {sorted(input_shape)})."
            )
        input_shape = {k: v for k, v in input_shape.items() if k in head.IN_FEATURES}
        return {
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            # The multi-scale features have CONVS_DIM channels.
            "transformer_predictor": build_transformer_decoder(cfg, head.CONVS_DIM),
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, object]:
        """
        Args:
            features: backbone maps by name, (N, C_k, H / s_k, W / s_k).

        Returns:
            the transformer decoder's prediction dict.
        """
        return self.predictor(*self.pixel_features(features))

    def pixel_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """The pixel decoder's part, per image: what the transformer decoder reads.

        Returns:
            the multi-scale features (N, CONVS_DIM, H_l, W_l), low resolution first, and the
            mask features (N, MASK_DIM, H / 4, W / 4).
        """
        mask_features, multi_scale_features = self.pixel_decoder(features)
        return multi_scale_features, mask_features
