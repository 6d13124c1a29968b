"""Multi-scale deformable attention: input checks and dispatch to the best implementation.

The compiled extension ``_C`` (built by ``pip install --no-build-isolation -e .``) registers
``torch.ops.mask2former.ms_deform_attn_forward`` / ``ms_deform_attn_backward`` with a CPU
kernel (float32, float64) and, when built with CUDA, a CUDA kernel (float32, float64,
float16, bfloat16). This module adds their fake (meta) implementations and autograd formula,
so ``torch.compile`` and ``torch.export`` trace through the op, and picks an implementation
at call time from the device and dtype of ``value``: the kernel when the extension is built
and supports them, else the pure-PyTorch reference. Half-precision values on the CPU run the
float32 CPU kernel on a float32 copy and come back rounded to their dtype (every
implementation computes half types in float32).

Shape legend:
    N: batch, S: total number of value positions over all levels (sum of H_l * W_l),
    Q: queries, M: attention heads, D: channels per head, L: levels, P: sampling points.
"""

import importlib
import importlib.util
import logging
from types import ModuleType
from typing import Dict, Optional, Set, Tuple

import torch

from .levels import level_values, tracing
from .reference import ms_deform_attn_reference

logger = logging.getLogger(__name__)

__all__ = ["implementation_for", "kernel_available", "ms_deform_attn"]

REFERENCE = "reference"
CPU_KERNEL = "cpu_kernel"
CUDA_KERNEL = "cuda_kernel"

_HALF_TYPES = (torch.float16, torch.bfloat16)
_INTEGER_TYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_KERNEL_DTYPES: Dict[str, Tuple[torch.dtype, ...]] = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
_KERNEL_NAMES = {"cpu": CPU_KERNEL, "cuda": CUDA_KERNEL}
# value dtypes a device's kernel runs on a copy in another dtype: the CPU kernel has no half
# types, and computes them in float32 as the CUDA kernel does
_COMPUTE_DTYPES: Dict[Tuple[str, torch.dtype], torch.dtype] = {
    ("cpu", torch.float16): torch.float32,
    ("cpu", torch.bfloat16): torch.float32,
}
_OP_NAMESPACE = "mask2former"


def _load_extension() -> Optional[ModuleType]:
    """Imports ``_C`` if it was built; a built but unloadable extension is an error."""
    name = f"{__package__}._C"
    if importlib.util.find_spec(name) is None:
        logger.debug(
            "%s is not built: multi-scale deformable attention uses the PyTorch reference. "
            "Build it with `pip install --no-build-isolation -e .`.",
            name,
        )
        return None
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(
            f"{name} exists but cannot be loaded ({error}). It was probably built against "
            "another torch or CUDA version: rebuild it with "
            "`pip install --no-build-isolation -e .` (or delete the .so to use the reference)."
        ) from error


_C = _load_extension()
_logged_choices: Set[Tuple[str, torch.dtype, str]] = set()


def _compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernel of ``device_type`` computes ``value`` tensors of ``dtype`` in."""
    return _COMPUTE_DTYPES.get((device_type, dtype), dtype)


def kernel_available(device_type: str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether a compiled kernel exists for ``value`` tensors of this device type and dtype
    (directly, or on a float32 copy for half types on the CPU).

    Args:
        device_type: ``"cpu"``, ``"cuda"``, ...
        dtype: dtype of ``value``.
    """
    if _C is None or _compute_dtype(device_type, dtype) not in _KERNEL_DTYPES.get(device_type, ()):
        return False
    return device_type != "cuda" or _C.cuda_built()


def implementation_for(device_type: str, dtype: torch.dtype) -> str:
    """Name of the implementation :func:`ms_deform_attn` uses for this device type and dtype.

    Returns:
        ``"cpu_kernel"``, ``"cuda_kernel"`` or ``"reference"``.
    """
    if kernel_available(device_type, dtype):
        return _KERNEL_NAMES[device_type]
    return REFERENCE


# How to build the CUDA kernels, for the warning below.
_CUDA_REBUILD_COMMAND = "FORCE_CUDA=1 pip install --no-build-isolation --no-deps -e ."


def _log_choice_once(device_type: str, dtype: torch.dtype, implementation: str) -> None:
    """Log the implementation picked for a device type and dtype, the first time only.

    A CUDA tensor on the PyTorch reference is a WARNING: the extension is missing or was
    built without CUDA, and the reference is many times slower and uses much more memory.
    """
    key = (device_type, dtype, implementation)
    if key in _logged_choices:
        return
    _logged_choices.add(key)
    dtype_name = str(dtype).replace("torch.", "")
    if device_type == "cuda" and implementation == REFERENCE:
        reason = "not built" if _C is None else "built without CUDA"
        logger.warning(
            "multi-scale deformable attention on cuda/%s uses the PyTorch reference because the "
            "compiled extension is %s: it is much slower and needs much more memory. Rebuild "
            "it with nvcc (CUDA %s) on the PATH: `%s`.",
            dtype_name,
            reason,
            torch.version.cuda,
            _CUDA_REBUILD_COMMAND,
        )
        return
    compute_dtype = _compute_dtype(device_type, dtype)
    copy = ""
    if implementation != REFERENCE and compute_dtype != dtype:
        copy = f" on a {str(compute_dtype).replace('torch.', '')} copy"
    logger.info(
        "multi-scale deformable attention on %s/%s uses the %s%s",
        device_type,
        dtype_name,
        implementation.replace("_", " "),
        copy,
    )


def _check_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    """Raises ValueError / TypeError naming the offending argument; see ms_deform_attn."""
    named = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, tensor in named.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"ms_deform_attn: {name} must be a torch.Tensor, got {type(tensor)}")
    for name in ("value", "sampling_locations", "attention_weights"):
        if not named[name].is_floating_point():
            raise TypeError(
                f"ms_deform_attn: {name} must be a floating point tensor, got {named[name].dtype}"
            )
    for name in ("spatial_shapes", "level_start_index"):
        if named[name].dtype not in _INTEGER_TYPES:
            raise TypeError(
                f"ms_deform_attn: {name} must be an integer tensor (int64), got {named[name].dtype}"
            )
    devices = {name: tensor.device for name, tensor in named.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(
            "ms_deform_attn: all inputs must be on the same device, got "
            + ", ".join(f"{name} on {device}" for name, device in devices.items())
        )
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must be (N, S, M, D), got {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "ms_deform_attn: sampling_locations must be (N, Q, M, L, P, 2), got "
            f"{tuple(sampling_locations.shape)}"
        )
    batch, _, heads, _ = value.shape
    loc_batch, queries, loc_heads, levels, points, _ = sampling_locations.shape
    if (loc_batch, loc_heads) != (batch, heads):
        raise ValueError(
            f"ms_deform_attn: sampling_locations {tuple(sampling_locations.shape)} has batch "
            f"{loc_batch} and {loc_heads} heads but value {tuple(value.shape)} has batch "
            f"{batch} and {heads} heads"
        )
    expected_weights = (batch, queries, heads, levels, points)
    if tuple(attention_weights.shape) != expected_weights:
        raise ValueError(
            f"ms_deform_attn: attention_weights must be (N, Q, M, L, P) = {expected_weights} "
            f"to match sampling_locations, got {tuple(attention_weights.shape)}"
        )
    if tuple(spatial_shapes.shape) != (levels, 2):
        raise ValueError(
            f"ms_deform_attn: spatial_shapes must be (L, 2) with L = {levels} levels (from "
            f"sampling_locations), got {tuple(spatial_shapes.shape)}"
        )
    if tuple(level_start_index.shape) != (levels,):
        raise ValueError(
            f"ms_deform_attn: level_start_index must be (L,) with L = {levels} levels, got "
            f"{tuple(level_start_index.shape)}"
        )
    if tracing():
        # The values of spatial_shapes are data: checking them would stop graph capture.
        return
    # Read back from the device (a host synchronisation) only for tensors not made by
    # level_tensors().
    shapes = [(int(h), int(w)) for h, w in level_values(spatial_shapes)]
    sizes = [h * w for h, w in shapes]
    if any(h < 0 or w < 0 for h, w in shapes):
        raise ValueError(f"ms_deform_attn: spatial_shapes {shapes} has a negative size")
    if sum(sizes) != value.shape[1]:
        raise ValueError(
            f"ms_deform_attn: value has S = {value.shape[1]} positions but spatial_shapes "
            f"{shapes} cover {sum(sizes)}"
        )
    starts = [sum(sizes[:level]) for level in range(levels)]
    given_starts = level_values(level_start_index)
    if given_starts != starts:
        raise ValueError(
            f"ms_deform_attn: level_start_index {given_starts} is inconsistent "
            f"with spatial_shapes {shapes}: expected {starts}"
        )


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention; same definition as :func:`ms_deform_attn_reference`.

    Uses the compiled kernel for ``value``'s device and dtype when there is one (see
    :func:`implementation_for`), else the reference. Differentiable with respect to
    ``value``, ``sampling_locations`` and ``attention_weights``. Non-contiguous inputs are
    accepted; ``sampling_locations`` and ``attention_weights`` are cast to value's dtype
    (float32 for float16 / bfloat16 values, where the kernels accumulate in float32). On the
    CPU, float16 / bfloat16 values run the float32 kernel on a float32 copy; the output is
    rounded to their dtype.

    Args:
        value: (N, S, M, D) values of all levels, flattened level by level.
        spatial_shapes: (L, 2) integer (H_l, W_l) of each level.
        level_start_index: (L,) integer offset of each level in S.
        sampling_locations: (N, Q, M, L, P, 2) normalised (x, y) sampling locations.
        attention_weights: (N, Q, M, L, P) attention weights.

    Returns:
        (N, Q, M * D) in value's dtype.

    Raises:
        TypeError: a non-floating value / locations / weights, or non-integer shapes.
        ValueError: inputs on different devices or with inconsistent shapes.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    implementation = implementation_for(value.device.type, value.dtype)
    if not tracing():
        _log_choice_once(value.device.type, value.dtype, implementation)
    if implementation == REFERENCE:
        return ms_deform_attn_reference(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    location_dtype = torch.float32 if value.dtype in _HALF_TYPES else value.dtype
    output = torch.ops.mask2former.ms_deform_attn_forward(
        value.to(_compute_dtype(value.device.type, value.dtype)).contiguous(),
        spatial_shapes.to(torch.int64).contiguous(),
        level_start_index.to(torch.int64).contiguous(),
        sampling_locations.to(location_dtype).contiguous(),
        attention_weights.to(location_dtype).contiguous(),
    )
    return output.to(value.dtype)


def _forward_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    batch, _, heads, channels = value.shape
    return value.new_empty((batch, sampling_locations.shape[1], heads * channels))


def _backward_fake(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output
):
    return (
        torch.empty_like(value),
        torch.empty_like(sampling_locations),
        torch.empty_like(attention_weights),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        ctx.saved_tensors
    )
    grad_value, grad_locations, grad_weights = torch.ops.mask2former.ms_deform_attn_backward(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        grad_output.contiguous(),
    )
    return grad_value, None, None, grad_locations, grad_weights


if _C is not None:
    torch.library.register_fake(f"{_OP_NAMESPACE}::ms_deform_attn_forward")(_forward_fake)
    torch.library.register_fake(f"{_OP_NAMESPACE}::ms_deform_attn_backward")(_backward_fake)
    torch.library.register_autograd(
        f"{_OP_NAMESPACE}::ms_deform_attn_forward", _backward, setup_context=_setup_context
    )
