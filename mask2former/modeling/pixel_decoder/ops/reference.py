"""Pure-PyTorch multi-scale deformable attention: the definition the kernels are held to.

Shape legend:
    N: batch, S: total number of value positions over all levels (sum of H_l * W_l),
    Q: queries, M: attention heads, D: channels per head, L: levels, P: sampling points.
"""

import torch
import torch.nn.functional as F

from .levels import level_values


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention (Deformable DETR, eq. 3), with ``grid_sample``.

    Each query gathers, for each head, the bilinearly interpolated values at P points on
    each of the L levels and sums them weighted by ``attention_weights``. Locations are
    normalised to [0, 1] per level, (x, y) order, pixel centres at (i + 0.5) / size
    (``align_corners=False``); points outside the map read zeros.

    Args:
        value: (N, S, M, D) values of all levels, flattened level by level.
        spatial_shapes: (L, 2) int64, (H_l, W_l) of each level.
        level_start_index: (L,) int64, offset of each level in S. Unused here (implied by
            ``spatial_shapes``); kept so all implementations share one signature.
        sampling_locations: (N, Q, M, L, P, 2) normalised (x, y) sampling locations.
        attention_weights: (N, Q, M, L, P) weights, usually a softmax over L * P.

    Returns:
        (N, Q, M * D) attended values.
    """
    del level_start_index
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    # Sample and sum in float32 for half-precision values (as the kernels accumulate):
    # half-precision grid coordinates put points up to half a pixel off on a 256-wide map.
    compute_dtype = torch.float32 if value.dtype in (torch.float16, torch.bfloat16) else value.dtype
    level_shapes = level_values(spatial_shapes)  # no read from the device for level_tensors()
    sizes = [int(h) * int(w) for h, w in level_shapes]
    value_per_level = value.split(sizes, dim=1)
    # grid_sample works on [-1, 1] coordinates.
    grids = 2 * sampling_locations.to(compute_dtype) - 1
    sampled = []
    for level, (height, width) in enumerate(level_shapes):
        # (N, H_l * W_l, M, D) -> (N * M, D, H_l, W_l), a contiguous copy: grid_sample's CPU
        # kernel reads the strided view wrongly for half types on large maps.
        level_value = (
            value_per_level[level]
            .flatten(2)
            .transpose(1, 2)
            .reshape(batch * num_heads, head_dim, int(height), int(width))
            .to(compute_dtype)
            .contiguous()
        )
        # (N, Q, M, P, 2) -> (N * M, Q, P, 2)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # (N * M, D, Q, P)
        sampled.append(
            F.grid_sample(
                level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )
    # (N, Q, M, L, P) -> (N * M, 1, Q, L * P)
    weights = attention_weights.to(compute_dtype).transpose(1, 2)
    weights = weights.reshape(batch * num_heads, 1, num_queries, num_levels * num_points)
    # (N * M, D, Q, L * P) weighted sum over points -> (N * M, D, Q)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    output = output.view(batch, num_heads * head_dim, num_queries).transpose(1, 2)
    return output.to(value.dtype).contiguous()
