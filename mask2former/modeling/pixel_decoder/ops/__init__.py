"""Multi-scale deformable attention: pure-PyTorch reference, C++ and CUDA kernels."""

from .functional import implementation_for, kernel_available, ms_deform_attn
from .levels import level_tensors
from .modules import MSDeformAttn
from .reference import ms_deform_attn_reference

__all__ = [
    "MSDeformAttn",
    "implementation_for",
    "kernel_available",
    "level_tensors",
    "ms_deform_attn",
    "ms_deform_attn_reference",
]
