"""Frozen batch norm folded into the convolution before it, for inference.

A detectron2 ``Conv2d`` followed by its ``FrozenBatchNorm2d`` (the ResNet backbones of the
official configs, ``MODEL.RESNETS.NORM: FrozenBN``) computes ``(W * x + b) * s + t`` with a
per-channel scale ``s = gamma / sqrt(var + eps)`` and shift ``t = beta - mean * s``: the same
as one convolution with weight ``W * s`` and bias ``b * s + t``. Folding removes the 53 batch
norms of an R50 (a kernel each on a GPU) and, under autocast, the float32 activations they
produce and the casts back that follow them.

The result equals the unfolded model up to float rounding. Inference only: the folded
model's parameters are no longer those of a checkpoint (its ``state_dict`` has no ``norm``
entries), and training it would train the folded weights.
"""

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

__all__ = ["fold_frozen_batchnorm"]


def fold_frozen_batchnorm(model: nn.Module) -> int:
    """Fold every ``FrozenBatchNorm2d`` that is the ``norm`` of a detectron2 ``Conv2d`` into
    that convolution's weight and bias, in place; the ``norm`` becomes None. Other norms
    (trainable batch norm, group norm, layer norm) are left as they are.

    Returns:
        How many were folded.
    """
    count = 0
    with torch.no_grad():
        for module in model.modules():
            norm = getattr(module, "norm", None)
            if not (isinstance(module, Conv2d) and isinstance(norm, FrozenBatchNorm2d)):
                continue
            scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
            shift = norm.bias - norm.running_mean * scale
            weight = module.weight
            weight.mul_(scale.to(weight.dtype).view(-1, *([1] * (weight.dim() - 1))))
            bias = shift if module.bias is None else module.bias * scale + shift
            module.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=weight.requires_grad)
            module.norm = None
            count += 1
    return count
