"""Weights stored in autocast's dtype, for inference: each weight cast once, not at every forward.

Under ``torch.autocast`` a convolution, linear layer or attention projection casts its float32
weight and bias to the autocast dtype at every call (the cast is cached only within one
autocast region). For an R50 Mask2Former in bfloat16 that is 323 casts of 251 tensors per
forward (BENCHMARKS.md, "Operations per inference"), each a kernel launch on a GPU and, in a
CUDA graph, device time at every replay. Casting those weights once beforehand gives the same
values (autocast rounds them the same way), so the same outputs bit for bit; only the layers
autocast runs in lower precision are cast, normalisation layers and embeddings keep float32.

Inference only: the cast weights cannot be trained, and the model then expects to run under
autocast to that dtype.
"""

from typing import Iterator, Tuple

import torch
from torch import nn

__all__ = ["AUTOCAST_LAYERS", "store_weights_in_autocast_dtype", "autocast_weights"]

# Modules whose own weights autocast casts to its lower-precision dtype, and their names.
AUTOCAST_LAYERS = {
    nn.Linear: ("weight", "bias"),
    nn.Conv1d: ("weight", "bias"),
    nn.Conv2d: ("weight", "bias"),
    nn.Conv3d: ("weight", "bias"),
    nn.ConvTranspose1d: ("weight", "bias"),
    nn.ConvTranspose2d: ("weight", "bias"),
    nn.ConvTranspose3d: ("weight", "bias"),
    # the packed (or separate) input projections go through F.linear; bias_k / bias_v are
    # concatenated with the keys and values instead, and stay as they are
    nn.MultiheadAttention: (
        "in_proj_weight",
        "in_proj_bias",
        "q_proj_weight",
        "k_proj_weight",
        "v_proj_weight",
    ),
}


def autocast_weights(model: nn.Module) -> Iterator[Tuple[str, nn.Parameter]]:
    """(name, parameter) of the weights and biases that autocast casts in ``model``."""
    for module_name, module in model.named_modules():
        names = next(
            (names for kind, names in AUTOCAST_LAYERS.items() if isinstance(module, kind)), ()
        )
        for name in names:
            parameter = module._parameters.get(name)
            if parameter is not None:
                yield f"{module_name}.{name}" if module_name else name, parameter


def store_weights_in_autocast_dtype(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the weights that autocast to ``dtype`` would cast at every forward, in place.

    Args:
        model: an inference model (its other parameters and buffers are left as they are).
        dtype: torch.bfloat16 or torch.float16, the dtype the model will run under.

    Returns:
        How many tensors were cast.
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be torch.bfloat16 or torch.float16, got {dtype}.")
    count = 0
    with torch.no_grad():
        for _, parameter in autocast_weights(model):
            if parameter.dtype == torch.float32:  # as autocast: float64 is left alone
                parameter.data = parameter.data.to(dtype)
                count += 1
    return count
