"""The multi-scale deformable attention layer of Deformable DETR."""

import math

import torch
from torch import nn

from .functional import ms_deform_attn


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Zhu et al., Deformable DETR, 2021).

    Each query predicts, per head, level and point, a sampling offset around its reference
    point and an attention weight (softmax over levels x points), then gathers the values
    there with :func:`ms_deform_attn`.

    Parameter names match the official Deformable DETR / Mask2Former checkpoints:
    ``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``.
    """

    def __init__(
        self, embed_dim: int = 256, num_levels: int = 4, num_heads: int = 8, num_points: int = 4
    ):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.embed_dim = embed_dim
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on a ring of directions, one per head, growing with the point index."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (
            2.0 * math.pi / self.num_heads
        )
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        grid = directions.view(self.num_heads, 1, 1, 2).repeat(
            1, self.num_levels, self.num_points, 1
        )
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            query: (N, Q, C) queries (with positional embedding added).
            reference_points: (N, Q, L, 2) normalised (x, y) reference points in [0, 1].
            value: (N, S, C) flattened features of all levels.
            spatial_shapes: (L, 2) int64 (H_l, W_l).
            level_start_index: (L,) int64 start of each level in S.

        Returns:
            (N, Q, C)
        """
        batch, num_queries, _ = query.shape
        _, num_values, _ = value.shape
        # ms_deform_attn checks value's length against spatial_shapes (outside of tracing).
        value = self.value_proj(value)
        value = value.view(batch, num_values, self.num_heads, self.embed_dim // self.num_heads)
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points, 2
        )
        weights = self.attention_weights(query).view(
            batch, num_queries, self.num_heads, self.num_levels * self.num_points
        )
        weights = weights.softmax(-1).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points
        )
        # Locations are computed in float32 whatever the autocast dtype: half precision
        # would put the sampling points up to half a pixel off on large maps.
        offsets = offsets.float()
        reference_points = reference_points.float()
        if reference_points.shape[-1] != 2:
            raise ValueError(
                "reference_points must be (N, Q, L, 2) normalised (x, y) points, got shape "
                f"{tuple(reference_points.shape)}"
            )
        # offsets are in pixels of each level: normalise by (W_l, H_l)
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[
            None, None, None, :, None, :
        ].to(offsets.dtype)
        output = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(output)
