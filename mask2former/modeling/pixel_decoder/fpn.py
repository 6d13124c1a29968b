"""A light FPN pixel decoder (MaskFormer's), with no attention."""

from typing import Dict, List, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from torch import nn

from ..layers import fpn_lateral_conv, fpn_output_conv
from .build import PIXEL_DECODER_REGISTRY

__all__ = ["BasePixelDecoder"]


@PIXEL_DECODER_REGISTRY.register()
class BasePixelDecoder(nn.Module):
    """Top-down FPN over the backbone features.

    The coarsest map goes through a 3x3 conv + norm + ReLU; every finer map through a lateral
    1x1 conv + norm (``adapter_k``), is added to the nearest-upsampled coarser output, then
    goes through a 3x3 conv + norm + ReLU (``layer_k``); k counts from the finest input, as in
    the official checkpoints. A 3x3 conv (``mask_features``) of the finest output gives the
    per-pixel embeddings; the FPN outputs, coarsest first, are the multi-scale features.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        conv_dim: int,
        mask_dim: int,
        norm: str = "",
        norm_num_groups: int = 32,
        num_multi_scale_features: int = 3,
    ):
        """
        Args:
            input_shape: backbone features the decoder reads (name -> ShapeSpec).
            conv_dim: channels of the FPN.
            mask_dim: channels of the mask features.
            norm: norm of the FPN convs ("GN", "" or a detectron2 norm name).
            norm_num_groups: GroupNorm groups when ``norm`` is "GN".
            num_multi_scale_features: how many FPN outputs (coarsest first) are returned.
        """
        super().__init__()
        if num_multi_scale_features > len(input_shape):
            raise ValueError(
                f"BasePixelDecoder has {len(input_shape)} inputs, cannot return "
                f"{num_multi_scale_features} multi-scale features; add features to "
                "MODEL.SEM_SEG_HEAD.IN_FEATURES."
            )
        by_stride = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in by_stride]
        lateral_convs, output_convs = [], []
        for index, (_, shape) in enumerate(by_stride):
            coarsest = index == len(by_stride) - 1
            in_channels = shape.channels if coarsest else conv_dim
            output_conv = fpn_output_conv(in_channels, conv_dim, norm, norm_num_groups)
            lateral_conv = None
            if not coarsest:
                lateral_conv = fpn_lateral_conv(shape.channels, conv_dim, norm, norm_num_groups)
                self.add_module(f"adapter_{index + 1}", lateral_conv)
            self.add_module(f"layer_{index + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # Plain lists (the modules are registered above): applied coarse to fine.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        weight_init.c2_xavier_fill(self.mask_features)
        self.num_multi_scale_features = num_multi_scale_features

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "norm_num_groups": head.NORM_NUM_GROUPS,
            "num_multi_scale_features": cfg.MODEL.MASK_FORMER.NUM_FEATURE_LEVELS,
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            features: backbone maps by name, (N, C_k, H_k, W_k).

        Returns:
            mask_features (N, mask_dim, H_0, W_0) at the finest input's resolution, and the
            first ``num_multi_scale_features`` FPN outputs (N, conv_dim, H_k, W_k), coarsest
            first.
        """
        multi_scale_features = []
        output = None
        for name, lateral_conv, output_conv in zip(
            self.in_features[::-1], self.lateral_convs, self.output_convs
        ):
            x = features[name]
            if lateral_conv is None:
                output = output_conv(x)
            else:
                lateral = lateral_conv(x)
                output = output_conv(
                    lateral + F.interpolate(output, size=lateral.shape[-2:], mode="nearest")
                )
            if len(multi_scale_features) < self.num_multi_scale_features:
                multi_scale_features.append(output)
        return self.mask_features(output), multi_scale_features
