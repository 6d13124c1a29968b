"""The level tensors of multi-scale deformable attention, and their values on the host.

``spatial_shapes`` (L, 2) and ``level_start_index`` (L,) describe where each level lies in the
flattened ``value``. Code that needs their values as Python ints (input checks, the reference's
split) would read them back from the device, which on a GPU makes the host wait at every call;
for tensors made by :func:`level_tensors` the values are known without that read.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["level_tensors", "level_values", "tracing"]


def tracing() -> bool:
    """Whether torch.compile or torch.export is tracing (sizes may be symbolic)."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


# The tensors made by level_tensors(), with the values they hold as Python ints and their
# version counter then (None for inference tensors, which have none).
_KNOWN_LEVELS = WeakIdKeyDictionary()


def _version(tensor: torch.Tensor) -> Optional[int]:
    return None if tensor.is_inference() else tensor._version


def level_tensors(
    shapes: Sequence[Tuple[int, int]], device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``spatial_shapes`` and ``level_start_index`` for levels of the given sizes.

    Made on ``device`` without copying from the host (each size is written by its own fill,
    so sizes that are symbolic under ``torch.export`` stay symbolic). Their values are then
    known to :func:`level_values` without reading the tensors back.

    Args:
        shapes: (H_l, W_l) of each level.
        device: where to make the tensors.

    Returns:
        spatial_shapes (L, 2) int64 and level_start_index (L,) int64.
    """
    rows = [
        torch.stack([torch.scalar_tensor(size, dtype=torch.long, device=device) for size in shape])
        for shape in shapes
    ]
    spatial_shapes = torch.stack(rows)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat((sizes.new_zeros((1,)), sizes.cumsum(0)[:-1]))
    if not tracing():
        shapes = [(int(height), int(width)) for height, width in shapes]
        starts = [sum(h * w for h, w in shapes[:level]) for level in range(len(shapes))]
        _KNOWN_LEVELS[spatial_shapes] = (_version(spatial_shapes), shapes)
        _KNOWN_LEVELS[level_start_index] = (_version(level_start_index), starts)
    return spatial_shapes, level_start_index


def level_values(tensor: torch.Tensor) -> List:
    """The values of ``spatial_shapes`` or ``level_start_index`` as Python ints (nested like
    ``tolist()``): known if :func:`level_tensors` made the tensor, or if this function read it
    before, and it was not modified since; else read from it (a host synchronisation on a
    GPU). A tensor made elsewhere and passed again at every call is so read once.
    Inference-mode tensors from elsewhere are read every time: they have no version counter
    to tell an in-place change. Under torch.compile / torch.export the tensor is read (what
    the tracer does with data), without the cache, which the tracer cannot follow."""
    if tracing():
        return tensor.tolist()
    known = _KNOWN_LEVELS.get(tensor)
    if known is not None and known[0] == _version(tensor):
        return known[1]
    values = tensor.tolist()
    if not tensor.is_inference():
        _KNOWN_LEVELS[tensor] = (_version(tensor), values)
    return values
