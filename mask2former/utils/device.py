"""Where to run: the configured device, or the CPU when CUDA is asked for but missing."""

import logging

import torch

__all__ = ["runnable_device"]

logger = logging.getLogger(__name__)


def runnable_device(configured: str) -> torch.device:
    """The device to run on for ``MODEL.DEVICE`` = ``configured``.

    The official configs ask for CUDA; on a machine without it they run on the CPU, with a
    WARNING, since that is many times slower.

    Args:
        configured: a torch device string ("cuda", "cuda:1", "cpu", ...).

    Returns:
        ``torch.device(configured)``, or the CPU when it is a CUDA device and CUDA is not
        available.
    """
    device = torch.device(configured)
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.warning(
            "MODEL.DEVICE is %r but CUDA is not available: running on the CPU instead, which is "
            "much slower (set MODEL.DEVICE cpu to silence this).",
            configured,
        )
        return torch.device("cpu")
    return device
