"""ONNX translation of the multi-scale deformable attention custom op, with standard ops only.

``torch.ops.mask2former.ms_deform_attn_forward`` (the compiled op; see
``mask2former/modeling/pixel_decoder/ops/functional.py``) has no ONNX counterpart. The exporter
(:mod:`mask2former.export.exporter`) hands :func:`onnx_translations` to ``torch.onnx.export``
as its custom translation table, so wherever the op appears in a graph it becomes the function
below: one ``GridSample`` per level (bilinear, zero padding, ``align_corners=0``), then the
attention-weighted sum, the computation of
:func:`~mask2former.modeling.pixel_decoder.ops.ms_deform_attn_reference`. Spatial shapes and
level offsets stay tensors, so the graph takes any image size.

Needs ``onnxscript`` (imported by this module); the package imports without it.

Shape legend:
    N: batch, S: positions of all levels, Q: queries, M: heads, D: channels per head,
    L: levels, P: sampling points.
"""

from typing import Callable, Dict, Sequence

import torch
from onnxscript import opset20 as op

__all__ = ["ONNX_OPSET", "ms_deform_attn_onnx", "onnx_translations"]

# The opset of the translation (and of the exported files): GridSample exists from opset 16;
# opset 20 names its bilinear mode "linear".
ONNX_OPSET = 20


def _ints(values: Sequence[int]):
    """A 1-D int64 constant (Python lists are ambiguous as op inputs)."""
    return op.Constant(value_ints=list(values))


def _dims(shape, start: int, end: int):
    """shape[start:end] of a Shape output, as a 1-D int64 tensor."""
    return op.Slice(shape, _ints([start]), _ints([end]))


def ms_deform_attn_onnx(value, spatial_shapes, level_start_index, sampling_locations, weights):
    """Multi-scale deformable attention in ONNX ops.

    Args:
        value: (N, S, M, D).
        spatial_shapes: (L, 2) int64 (H_l, W_l).
        level_start_index: (L,) int64 offset of each level in S.
        sampling_locations: (N, Q, M, L, P, 2) normalised (x, y); L must be static.
        weights: (N, Q, M, L, P) attention weights.

    Returns:
        (N, Q, M * D).
    """
    num_levels = sampling_locations.shape[3]
    value_shape = op.Shape(value)
    location_shape = op.Shape(sampling_locations)
    batch = _dims(value_shape, 0, 1)
    head_dim = _dims(value_shape, 3, 4)
    queries = _dims(location_shape, 1, 2)
    points = _dims(location_shape, 4, 5)
    # GridSample reads [-1, 1] coordinates
    grids = op.Sub(
        op.Mul(sampling_locations, op.CastLike(2.0, sampling_locations)),
        op.CastLike(1.0, sampling_locations),
    )
    # (N, S, M, D) -> (N, M, D, S): each level is then a slice of the last axis
    channels_first = op.Transpose(value, perm=[0, 2, 3, 1])
    sampled = []
    for level in range(num_levels):
        size = op.Gather(spatial_shapes, op.Constant(value_int=level), axis=0)  # (2,) H_l, W_l
        start = op.Gather(level_start_index, _ints([level]), axis=0)  # (1,)
        end = op.Add(start, op.ReduceProd(size, keepdims=1))
        # (N, M, D, H_l * W_l) -> (N * M, D, H_l, W_l)
        level_value = op.Slice(channels_first, start, end, _ints([3]))
        level_value = op.Reshape(level_value, op.Concat(_ints([-1]), head_dim, size, axis=0))
        # (N, Q, M, P, 2) -> (N, M, Q, P, 2) -> (N * M, Q, P, 2)
        grid = op.Gather(grids, op.Constant(value_int=level), axis=3)
        grid = op.Transpose(grid, perm=[0, 2, 1, 3, 4])
        grid = op.Reshape(grid, op.Concat(_ints([-1]), queries, points, _ints([2]), axis=0))
        # (N * M, D, Q, P)
        sampled.append(
            op.GridSample(level_value, grid, mode="linear", padding_mode="zeros", align_corners=0)
        )
    # (N * M, D, Q, L * P), level-major like the weights below
    stacked = op.Concat(*sampled, axis=3)
    # (N, Q, M, L, P) -> (N, M, Q, L, P) -> (N * M, 1, Q, L * P)
    levels_points = op.ReduceProd(_dims(op.Shape(weights), 3, 5), keepdims=1)
    weights = op.Reshape(
        op.Transpose(weights, perm=[0, 2, 1, 3, 4]),
        op.Concat(_ints([-1, 1]), queries, levels_points, axis=0),
    )
    output = op.ReduceSum(op.Mul(stacked, op.CastLike(weights, stacked)), _ints([-1]), keepdims=0)
    # (N * M, D, Q) -> (N, M * D, Q) -> (N, Q, M * D)
    output = op.Reshape(output, op.Concat(batch, _ints([-1]), queries, axis=0))
    return op.Transpose(output, perm=[0, 2, 1])


def onnx_translations() -> Dict[Callable, Callable]:
    """``torch.onnx.export``'s ``custom_translation_table`` for this project's custom ops.

    Needs the compiled extension, which defines the op (the exporter checks it first).
    """
    return {torch.ops.mask2former.ms_deform_attn_forward.default: ms_deform_attn_onnx}
