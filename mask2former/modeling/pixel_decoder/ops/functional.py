"""Multi-scale deformable attention: input checks and dispatch to the best implementation."""

import torch

from .reference import ms_deform_attn_reference


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """See :func:`ms_deform_attn_reference` for the definition and shapes."""
    # Placeholder until the compiled kernels are dispatched here.
    return ms_deform_attn_reference(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
