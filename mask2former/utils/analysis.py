"""FLOP and activation counts of Mask2Former models, with Detectron2's and fvcore's counters.

fvcore counts one multiply-add as one flop, from the operators of a ``torch.jit`` trace of
the model (Detectron2's ``TracingAdapter`` flattens its list-of-dicts inputs and outputs), and
has no formula for two operators this project's models run:

- ``aten::scaled_dot_product_attention``, which our attention layers call where the official
  release's ``nn.MultiheadAttention`` ran two batched matrix products. It is counted as those
  products: ``L * S * (E + Ev)`` per batch element and head, for queries (L, E), keys (S, E)
  and values (S, Ev). Without this the transformer decoder's attention would count zero.
- ``mask2former::ms_deform_attn_forward``, the multi-scale deformable attention op: 5
  multiply-adds per sampled point and channel (4 bilinear taps, then the attention weight),
  ``5 * N * Q * M * L * P * D``. The official release's Python autograd function is not
  traced, so it counted zero there (under 1% of an R50 model's total at 800 px).

Both also count their outputs as activations, as fvcore does for the matrix products.
Operators without a formula (elementwise, indexing, reductions) are left out, as in
Detectron2; :func:`flop_count_analysis`'s ``unsupported_ops()`` lists them.
"""

import math
from typing import Any, List

from detectron2.export import TracingAdapter
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn import ActivationCountAnalysis
from fvcore.nn.jit_handles import generic_activation_jit, get_shape

__all__ = [
    "activation_count_analysis",
    "flop_count_analysis",
    "ms_deform_attn_flops",
    "sdpa_flops",
]

SDPA = "aten::scaled_dot_product_attention"
MS_DEFORM_ATTN = "mask2former::ms_deform_attn_forward"


def sdpa_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Multiply-adds of ``aten::scaled_dot_product_attention``: query·keyᵀ, then the
    attention·values product (softmax and scaling are not counted, as for matmul + softmax)."""
    query, key, value = (get_shape(v) for v in inputs[:3])
    *batch, length, embed = query
    return math.prod(batch) * length * key[-2] * (embed + value[-1])


# Multiply-adds per sampled point and channel: 4 bilinear taps and the attention weight.
_DEFORMABLE_MACS_PER_SAMPLE = 5


def ms_deform_attn_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Multiply-adds of ``mask2former::ms_deform_attn_forward``: value (N, S, M, D), sampling
    locations (N, Q, M, L, P, 2)."""
    channels = get_shape(inputs[0])[-1]
    batch, queries, heads, levels, points, _ = get_shape(inputs[3])
    return _DEFORMABLE_MACS_PER_SAMPLE * batch * queries * heads * levels * points * channels


def flop_count_analysis(model, inputs) -> FlopCountAnalysis:
    """Detectron2's ``FlopCountAnalysis(model, inputs)`` (``inputs``: what the model is called
    with, e.g. its list of dicts) with the formulas above for the attention operators."""
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(**{SDPA: sdpa_flops, MS_DEFORM_ATTN: ms_deform_attn_flops})
    return analysis


def activation_count_analysis(model, inputs) -> ActivationCountAnalysis:
    """fvcore's ``ActivationCountAnalysis`` on what the model is called with (outputs that
    are not tensors, such as the panoptic segments' table, are left out of the trace), with
    the attention operators' outputs counted."""
    wrapper = TracingAdapter(model, inputs, allow_non_tensor=True)
    analysis = ActivationCountAnalysis(wrapper, wrapper.flattened_inputs)
    analysis.set_op_handle(
        **{SDPA: generic_activation_jit(), MS_DEFORM_ATTN: generic_activation_jit()}
    )
    return analysis
