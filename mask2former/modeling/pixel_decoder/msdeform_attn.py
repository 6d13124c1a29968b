"""Pixel decoder with a multi-scale deformable attention encoder (Mask2Former, Sec. 4.1).

Shape legend:
    N: batch, C: conv_dim, L: encoder levels, S: positions of all levels (sum of H_l * W_l),
    H_l, W_l: height and width of level l.
"""

import math
from typing import Dict, List, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from torch import nn

from ..layers import (
    fpn_lateral_conv,
    fpn_output_conv,
    get_activation_fn,
    with_pos_embed,
)
from ..position_encoding import PositionEmbeddingSine
from .build import PIXEL_DECODER_REGISTRY
from .ops import MSDeformAttn, level_tensors

__all__ = ["MSDeformAttnPixelDecoder", "MSDeformAttnEncoder", "MSDeformAttnEncoderLayer"]


class MSDeformAttnEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a feed-forward block (post-norm).

    Parameter names follow the official checkpoints: ``self_attn``, ``norm1``, ``linear1``,
    ``linear2``, ``norm2``.
    """

    def __init__(
        self,
        d_model: int = 256,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        num_levels: int = 3,
        num_heads: int = 8,
        num_points: int = 4,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, num_levels, num_heads, num_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = get_activation_fn(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            src: (N, S, C) features of all levels.
            pos: (N, S, C) position + level embeddings.
            reference_points: (N, S, L, 2) normalised (x, y) reference points.
            spatial_shapes: (L, 2) int64 (H_l, W_l).
            level_start_index: (L,) int64.

        Returns:
            (N, S, C)
        """
        attended = self.self_attn(
            with_pos_embed(src, pos), reference_points, src, spatial_shapes, level_start_index
        )
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(hidden))


class _EncoderStack(nn.Module):
    """The encoder layers (``layers.{i}``) and their shared reference points."""

    def __init__(self, layers: List[MSDeformAttnEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(
        spatial_shapes: List[Tuple[int, int]], batch: int, device: torch.device
    ) -> torch.Tensor:
        """Pixel centres of every level, as seen from every level.

        Args:
            spatial_shapes: (H_l, W_l) of each level.
            batch: N.
            device: where to make them.

        Returns:
            (N, S, L, 2) float32 normalised (x, y) reference points.
        """
        points = []
        for height, width in spatial_shapes:
            # pixel centres (i + 0.5); arange, unlike linspace, keeps symbolic sizes symbolic
            ref_y, ref_x = torch.meshgrid(
                torch.arange(height, dtype=torch.float32, device=device) + 0.5,
                torch.arange(width, dtype=torch.float32, device=device) + 0.5,
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1) / width, ref_y.reshape(-1) / height), -1))
        return torch.cat(points)[None, :, None].expand(batch, -1, len(spatial_shapes), -1)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """(N, S, C) -> (N, S, C); see :class:`MSDeformAttnEncoderLayer` for the arguments."""
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index)
        return src


class MSDeformAttnEncoder(nn.Module):
    """Deformable DETR's encoder over L feature maps, with a learnable embedding per level.

    Parameters: ``level_embed`` (L, C) and ``encoder.layers.{i}.*``, as in the official
    checkpoints.
    """

    def __init__(
        self,
        d_model: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        num_levels: int = 3,
        num_points: int = 4,
    ):
        super().__init__()
        self.encoder = _EncoderStack(
            [
                MSDeformAttnEncoderLayer(
                    d_model, dim_feedforward, dropout, activation, num_levels, num_heads, num_points
                )
                for _ in range(num_encoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(num_levels, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier for matrices, the op's own scheme for deformable attention, N(0, 1) levels."""
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]
    ) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """
        Args:
            srcs: L maps (N, C, H_l, W_l).
            pos_embeds: L positional embeddings (N, C, H_l, W_l).

        Returns:
            memory (N, S, C), the encoded features of all levels flattened level by level,
            and the (H_l, W_l) of each level.
        """
        # shape[-2:] rather than int(): under torch.export the sizes stay symbolic
        shapes = [(src.shape[-2], src.shape[-1]) for src in srcs]
        src_flat = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        pos_flat = torch.cat(
            [
                pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
                for level, pos in enumerate(pos_embeds)
            ],
            1,
        ).to(src_flat.dtype)
        spatial_shapes, level_start_index = level_tensors(shapes, src_flat.device)
        # shape[0], not len(): a symbolic batch under torch.export stays symbolic
        reference_points = self.encoder.reference_points(shapes, src_flat.shape[0], src_flat.device)
        memory = self.encoder(
            src_flat, pos_flat, reference_points, spatial_shapes, level_start_index
        )
        return memory, shapes


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention encoder over the low-resolution maps, then an FPN path down.

    The maps named in ``transformer_in_features`` (res3..res5 in the official models) are
    projected to ``conv_dim`` (1x1 conv + GroupNorm), given sine position and learnable level
    embeddings, and refined jointly by ``transformer_enc_layers`` deformable encoder layers.
    The remaining higher-resolution maps down to ``common_stride`` (res2) are merged FPN-style:
    lateral 1x1 conv + norm (``adapter_k``), plus the bilinearly upsampled coarser output,
    then a 3x3 conv + norm + ReLU (``layer_k``). A 1x1 conv (``mask_features``) of the finest
    output gives the per-pixel embeddings.

    Parameter names are those of the official checkpoints (``input_proj``, ``transformer``,
    ``adapter_k``, ``layer_k``, ``mask_features``); ``input_proj`` is ordered from the lowest
    resolution.

    Runs in the autocast dtype (the official release forces float32); the deformable
    attention op keeps its sampling locations in float32.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_in_features: List[str],
        conv_dim: int,
        mask_dim: int,
        norm: str,
        norm_num_groups: int = 32,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_num_points: int = 4,
        common_stride: int,
        num_multi_scale_features: int = 3,
    ):
        """
        Args:
            input_shape: backbone features the decoder reads (name -> ShapeSpec).
            transformer_in_features: names of the features refined by the encoder.
            conv_dim: channels of the encoder and FPN.
            mask_dim: channels of the mask features.
            norm: norm of the FPN convs ("GN", "" or a detectron2 norm name).
            norm_num_groups: GroupNorm groups, for the input projections and "GN" FPN norms.
            transformer_dropout: dropout in the encoder layers.
            transformer_nheads: deformable attention heads.
            transformer_dim_feedforward: hidden width of the encoder feed-forward blocks.
            transformer_enc_layers: number of encoder layers.
            transformer_num_points: sampling points per head and level.
            common_stride: stride of the mask features; FPN levels are added down to it.
            num_multi_scale_features: how many maps (lowest resolution first) are returned as
                multi-scale features.
        """
        super().__init__()
        missing = [name for name in transformer_in_features if name not in input_shape]
        if missing:
            raise ValueError(
                f"Deformable encoder features {missing} are not among the pixel decoder inputs "
                f"{sorted(input_shape)}; check MODEL.SEM_SEG_HEAD.IN_FEATURES and "
                "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES."
            )
        by_stride = sorted(input_shape.items(), key=lambda item: item[1].stride)
        encoder_shapes = [
            (name, shape) for name, shape in by_stride if name in transformer_in_features
        ]
        # Low resolution first, the order of the input projections and of the encoder levels.
        self.transformer_in_features = [name for name, _ in encoder_shapes][::-1]
        num_levels = len(self.transformer_in_features)
        self.input_proj = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(shape.channels, conv_dim, kernel_size=1),
                nn.GroupNorm(norm_num_groups, conv_dim),
            )
            for _, shape in encoder_shapes[::-1]
        )
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.constant_(projection[0].bias, 0)

        self.transformer = MSDeformAttnEncoder(
            d_model=conv_dim,
            num_heads=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_levels=num_levels,
            num_points=transformer_num_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)
        self.num_multi_scale_features = num_multi_scale_features

        # FPN levels between the finest encoder level and the common stride, fine to coarse.
        finest_stride = min(shape.stride for _, shape in encoder_shapes)
        num_fpn_levels = round(math.log2(finest_stride) - math.log2(common_stride))
        self.fpn_in_features = [name for name, _ in by_stride[:num_fpn_levels]]
        lateral_convs, output_convs = [], []
        for index, (_, shape) in enumerate(by_stride[:num_fpn_levels]):
            lateral_conv = fpn_lateral_conv(shape.channels, conv_dim, norm, norm_num_groups)
            output_conv = fpn_output_conv(conv_dim, conv_dim, norm, norm_num_groups)
            self.add_module(f"adapter_{index + 1}", lateral_conv)
            self.add_module(f"layer_{index + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # Plain lists (the modules are registered above): applied coarse to fine.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.fpn_in_features = self.fpn_in_features[::-1]
        if num_multi_scale_features > num_levels + num_fpn_levels:
            raise ValueError(
                f"MSDeformAttnPixelDecoder makes {num_levels + num_fpn_levels} feature maps, "
                f"cannot return {num_multi_scale_features} multi-scale features; lower "
                "MODEL.MASK_FORMER.NUM_FEATURE_LEVELS."
            )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "transformer_in_features": list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "norm_num_groups": head.NORM_NUM_GROUPS,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_dim_feedforward": head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_num_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "common_stride": head.COMMON_STRIDE,
            "num_multi_scale_features": cfg.MODEL.MASK_FORMER.NUM_FEATURE_LEVELS,
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            features: backbone maps by name, (N, C_k, H_k, W_k).

        Returns:
            mask_features (N, mask_dim, H / common_stride, W / common_stride) and the
            multi-scale features, ``num_multi_scale_features`` maps (N, conv_dim, H_l, W_l),
            lowest resolution first.
        """
        srcs = [
            projection(features[name])
            for name, projection in zip(self.transformer_in_features, self.input_proj)
        ]
        pos_embeds = [self.pe_layer(src) for src in srcs]
        memory, shapes = self.transformer(srcs, pos_embeds)

        batch, _, channels = memory.shape
        levels = memory.split([height * width for height, width in shapes], dim=1)
        # contiguous (N, C, H, W): a strided view would make every later resize copy at 1/4
        outputs = [
            level.transpose(1, 2).reshape(batch, channels, height, width).contiguous()
            for level, (height, width) in zip(levels, shapes)
        ]
        for name, lateral_conv, output_conv in zip(
            self.fpn_in_features, self.lateral_convs, self.output_convs
        ):
            lateral = lateral_conv(features[name])
            coarser = F.interpolate(
                outputs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            outputs.append(output_conv(lateral + coarser))
        return self.mask_features(outputs[-1]), outputs[: self.num_multi_scale_features]
