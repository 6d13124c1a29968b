"""How far a float32 or half-precision deformable-attention kernel may be from the exact result.

The kernels' results (output, and the gradients of value, sampling locations and attention
weights) are compared with float64 results on the same inputs, element by element, within a
bound that follows from where float32 loses precision (issue 9, evidence in its note):

- Sums: each result is a sum of products, rounded at each step, so its error scales with the
  sum of the magnitudes of its terms, not with the result. The location gradient is a
  difference of corner values times the map size: on a 40-pixel map, results of ~1 are sums
  of terms of ~800 in magnitude.
- Positions: the pixel coordinate ``y * H - 0.5`` is computed in float32, and each
  implementation rounds it its own way (CUDA in one fused multiply-add, the CPU kernel in two
  steps, the reference's grid_sample through ``2 * y - 1`` in [-1, 1]), so it is known to
  ``eps * ((|y| + 1) * H + 1)`` pixels, float32 eps. Every result moves with the coordinate;
  the location gradient along x moves with y through the bilinear cross term
  ``a * W * sum(g * (v00 - v01 - v10 + v11))``, which can be hundreds of times the result.
- Edges: rounding never moves a coordinate across an integer but can put it on one. There
  the location gradient along that axis is undefined (the bilinear derivative jumps), so
  that element of a point within the coordinate's rounding of a pixel edge (map borders
  included) is not compared; such elements are counted, and their number is bounded. All
  other results move only within the point's own cell and stay within the bound.

Shape legend as in the op: N batch, S value positions, M heads, D channels per head,
Q queries, L levels, P points.
"""

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch

from mask2former.modeling.pixel_decoder.ops import ms_deform_attn_reference

RESULT_NAMES = ("output", "grad_value", "grad_locations", "grad_weights")
# Rounding errors of the sums, in units of float32 eps * (sum of |terms|): a few eps, as both
# kernels' sums are short (4 corners and the channels of one head, or the points of one
# query); 4 leaves room for summation orders not measured (the order of CUDA's atomics).
SUM_ULPS = 4.0
# Error of a pixel coordinate, in units of float32 eps * ((|y| + 1) * H + 1) pixels: the
# kernels' y * H - 0.5 is off by at most eps * |y| * H / 2; grid_sample's 2 * y - 1 and
# ((g + 1) * H - 1) / 2 by up to about eps * (|y| + 1) * H / 2.
POSITION_ULPS = 1.0
# At most this fraction of the location-gradient elements may be skipped at pixel edges (on
# random locations a few in a million are; inputs on a pixel grid would leave the check empty).
MAX_EDGE_FRACTION = 1e-3


@dataclass
class Float64Bounds:
    """float64 results of one set of inputs, and how far a kernel's results may be from them.

    Attributes:
        expected: output (N, Q, M * D), grad_value (N, S, M, D), grad_locations
            (N, Q, M, L, P, 2) and grad_weights (N, Q, M, L, P), in float64.
        bound: per element of each, the largest error of float32 arithmetic: SUM_ULPS eps
            times the sum of the magnitudes of its terms, plus how far it moves when the
            pixel coordinates move by their float32 rounding.
        edge: (N, Q, M, L, P, 2) location-gradient elements of points within that rounding
            of a pixel edge along their own axis, where the derivative is undefined.
    """

    expected: Tuple[torch.Tensor, ...]
    bound: Tuple[torch.Tensor, ...]
    edge: torch.Tensor

    def tolerance(self, name: str, result_dtype: torch.dtype) -> torch.Tensor:
        """Largest error allowed per element of one result returned in ``result_dtype``."""
        i = RESULT_NAMES.index(name)
        result = torch.finfo(result_dtype)
        return (
            self.bound[i]
            + result.eps * self.expected[i].abs()  # the final rounding to result_dtype
            # underflow: CUDA's fast math flushes float32 below tiny to zero, and half types
            # round their subnormals to multiples of tiny * eps
            + torch.finfo(torch.float32).tiny
            + result.tiny * result.eps
        )

    def assert_close(self, actual: Sequence[torch.Tensor]) -> None:
        """Asserts that a kernel's four results are within the bounds, the worst named."""
        edges = int(self.edge.sum())
        assert edges <= MAX_EDGE_FRACTION * self.edge.numel(), (
            f"{edges} of {self.edge.numel()} location gradients lie at pixel edges and cannot "
            "be checked: draw the locations at random, not on a pixel grid"
        )
        for name, a, e in zip(RESULT_NAMES, actual, self.expected):
            assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)}, expected {e.shape}"
            tolerance = self.tolerance(name, a.dtype)
            a = a.detach().cpu().double()
            excess = (a - e).abs() / tolerance
            if name == "grad_locations":
                excess[self.edge] = 0
            worst = int(excess.argmax())
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), e.shape))
            assert excess.max() <= 1, (
                f"{name}: {int((excess > 1).sum())} of {e.numel()} elements outside the float32 "
                f"bound; worst at {index}: {a.flatten()[worst].item():.9g}, float64 "
                f"{e.flatten()[worst].item():.9g}, allowed error "
                f"{tolerance.flatten()[worst].item():.3g}"
            )


def float64_bounds(inputs: Sequence[torch.Tensor], grad_output: torch.Tensor) -> Float64Bounds:
    """Exact results and error bounds for a float32 or half-precision kernel run on ``inputs``.

    Args:
        inputs: value, spatial_shapes, level_start_index, sampling_locations and
            attention_weights exactly as given to the kernel (any device; value in float32,
            float16 or bfloat16, the kernels' arithmetic in float32).
        grad_output: (N, Q, M * D) gradient of the output given to the kernel's backward.
    """
    value, spatial_shapes, level_start_index, locations, weights = (
        t.detach().cpu() for t in inputs
    )
    if value.dtype == torch.float64:
        raise ValueError("float64 kernels: compare them with the float64 reference directly")
    grad_output = grad_output.detach().cpu()
    expected = _float64_results(
        (value, spatial_shapes, level_start_index, locations, weights), grad_output
    )
    batch, _, heads, channels = value.shape
    queries, levels = locations.shape[1], locations.shape[3]
    # pixel coordinates (N, Q, M, L, P), exact in float64, and their float32 rounding
    sizes = spatial_shapes.double().view(levels, 1, 2)
    x, y = locations.double().unbind(-1)
    w = x * sizes[..., 1] - 0.5
    h = y * sizes[..., 0] - 0.5
    eps = torch.finfo(torch.float32).eps
    delta_w = POSITION_ULPS * eps * ((x.abs() + 1) * sizes[..., 1] + 1)
    delta_h = POSITION_ULPS * eps * ((y.abs() + 1) * sizes[..., 0] + 1)
    # pixel edges: the integers -1 ... size (map borders included)
    edge = torch.stack(
        [
            ((c - c.round()).abs() <= delta) & (c.round() >= -1) & (c.round() <= size)
            for c, delta, size in ((w, delta_w, sizes[..., 1]), (h, delta_h, sizes[..., 0]))
        ],
        -1,
    )

    bound = [torch.zeros(e.shape, dtype=torch.float64) for e in expected]
    output_bound = bound[0].view(batch, queries, heads, channels)
    # magnitudes need no more than float32
    value = value.float()
    grad_output = grad_output.float().view(batch, queries, heads, channels)
    weights = weights.double().abs()
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        rows = slice(int(level_start_index[level]), int(level_start_index[level]) + height * width)
        for n in range(batch):
            at = (n, slice(None), slice(None), level)
            output, value_rows, grad_locations, grad_weights = _level_bounds(
                value[n, rows],
                grad_output[n],
                (height, width),
                (h[at], w[at]),
                (delta_h[at], delta_w[at]),
                weights[at],
            )
            output_bound[n] += output
            bound[1][n, rows] = value_rows
            bound[2][at] = grad_locations
            bound[3][at] = grad_weights
    return Float64Bounds(tuple(expected), tuple(bound), edge)


def _float64_results(inputs, grad_output):
    value, spatial_shapes, level_start_index, locations, weights = (
        t.double().requires_grad_() if t.is_floating_point() else t for t in inputs
    )
    output = ms_deform_attn_reference(value, spatial_shapes, level_start_index, locations, weights)
    grads = torch.autograd.grad(output, (value, locations, weights), grad_output.double())
    return [output.detach(), *grads]


def _level_bounds(rows, grad_output, size, coordinates, deltas, weights):
    """Error bounds of what the (Q, M, P) points of one batch element add on one level.

    Args:
        rows: (H * W, M, D) float32 values of the level.
        grad_output: (Q, M, D) float32.
        size: (H, W).
        coordinates: (h, w), each (Q, M, P) float64 pixel coordinates y * H - 0.5, x * W - 0.5.
        deltas: (delta_h, delta_w), each (Q, M, P): their float32 rounding.
        weights: (Q, M, P) float64 absolute attention weights.

    Returns:
        Bounds of output (Q, M, D), grad_value (H * W, M, D), grad_locations (Q, M, P, 2) and
        grad_weights (Q, M, P), in float64.
    """
    (height, width), (h, w), (delta_h, delta_w) = size, coordinates, deltas
    queries, heads, points = h.shape
    channels = rows.shape[-1]
    # the 4 corners (top-left, top-right, bottom-left, bottom-right) on a last axis
    dy, dx = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    h0, w0 = h.floor(), w.floor()
    frac_h, frac_w = (h - h0)[..., None], (w - w0)[..., None]
    r, c = h0.long()[..., None] + dy, w0.long()[..., None] + dx
    inside = ((h > -1) & (w > -1) & (h < height) & (w < width))[..., None]
    valid = inside & (r >= 0) & (r < height) & (c >= 0) & (c < width)
    head = torch.arange(heads).view(1, heads, 1, 1)
    # value row of each corner, or height * width * heads: a row of zeros
    index = torch.where(valid, (r * width + c) * heads + head, height * width * heads)
    weight_y = torch.where(dy == 1, frac_h, 1 - frac_h)
    weight_x = torch.where(dx == 1, frac_w, 1 - frac_w)
    weight = weight_y * weight_x
    d_h = (2 * dy - 1) * weight_x  # d(weight) / dh
    d_w = (2 * dx - 1) * weight_y
    delta_h, delta_w = delta_h[..., None], delta_w[..., None]

    table = torch.cat([rows.reshape(-1, channels), rows.new_zeros(1, channels)])
    corners = table[index].view(queries * heads, points * 4, channels)
    corners_abs = corners.abs()
    grad = grad_output.view(queries * heads, channels, 1)
    grad_abs = grad.abs()
    # per point and corner: sum over channels of g * v and of |g * v|
    dot = (corners @ grad).view(queries, heads, points, 4).double()
    dot_abs = (corners_abs @ grad_abs).view(queries, heads, points, 4).double()

    sums_eps = SUM_ULPS * torch.finfo(torch.float32).eps
    # output and grad_value sum a * weight * v and a * weight * g over points and corners
    a = weights[..., None]
    corner_bound = a * (sums_eps * weight + delta_h * d_h.abs() + delta_w * d_w.abs())
    corner_bound = corner_bound.float().view(queries * heads, 1, points * 4)
    output = (corner_bound @ corners_abs).view(queries, heads, channels)
    added = corner_bound.view(queries * heads, points * 4, 1) * grad_abs.view(-1, 1, channels)
    value_rows = table.new_zeros(table.shape).index_add_(0, index.flatten(), added.flatten(0, 1))

    # grad_locations: a * size * sum(g * d(sample)); it moves with the other coordinate
    # through the cross term a * size * sum(g * (v00 - v01 - v10 + v11))
    cross = (dot * dot.new_tensor([1.0, -1.0, -1.0, 1.0])).sum(-1).abs()
    a = weights
    grad_x = a * width * (sums_eps * (d_w.abs() * dot_abs).sum(-1) + cross * delta_h[..., 0])
    grad_y = a * height * (sums_eps * (d_h.abs() * dot_abs).sum(-1) + cross * delta_w[..., 0])
    # grad_weights: sum(g * sample)
    grad_weights = (
        sums_eps * (weight * dot_abs).sum(-1)
        + delta_h[..., 0] * (d_h * dot).sum(-1).abs()
        + delta_w[..., 0] * (d_w * dot).sum(-1).abs()
    )
    return (
        output.double(),
        value_rows[:-1].view(rows.shape).double(),
        torch.stack([grad_x, grad_y], -1),
        grad_weights,
    )
