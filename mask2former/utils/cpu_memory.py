"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

On a CPU, a Mask2Former forward allocates many large short-lived tensors (the deformable
encoder's feed-forward activations, for instance). glibc serves every block above its mmap
threshold with a fresh ``mmap`` and unmaps it on free, so the next forward pays a page fault
for every 4 KiB page again. Telling glibc never to mmap and never to trim the heap makes freed
blocks reusable, at the price of the process keeping its peak memory. What it saves is
measured in BENCHMARKS.md ("CPU inference").

It changes the whole process, so only entry points switch it on: ``demo/demo.py`` (through
``Predictor(..., tune_cpu_allocator=True)``), ``train_net.py``, the quickstart and the
benchmarks, on a CPU. A program that embeds the model may call :func:`keep_freed_memory`
itself. Setting ``MASK2FORMER_KEEP_FREED_MEMORY=0`` turns it off; it is also skipped when
glibc is not the allocator or when the user already tunes malloc (``MALLOC_*`` variables, or
a preloaded jemalloc / tcmalloc).
"""

import ctypes
import logging
import os
import platform

__all__ = ["keep_freed_memory"]

logger = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# mallopt takes an int: its maximum (2 GiB) as the trim threshold means "never trim" in
# practice, since only the free space at the top of the heap above it would be returned.
_INT_MAX = 2**31 - 1

_done = None


def _skip_reason() -> str:
    """Why the allocator is left alone, or '' if it may be tuned."""
    if os.environ.get("MASK2FORMER_KEEP_FREED_MEMORY", "1") == "0":
        return "MASK2FORMER_KEEP_FREED_MEMORY=0"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    preload = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload or "tcmalloc" in preload or "mimalloc" in preload:
        return f"another allocator is preloaded (LD_PRELOAD={preload})"
    tuned = sorted(name for name in os.environ if name.startswith("MALLOC_"))
    if tuned:
        return f"malloc is already tuned by the environment ({', '.join(tuned)})"
    return ""


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no mmap, no trimming); once per process.

    Returns:
        True if the allocator is (now) tuned, False if it was left alone (the reason is
        logged at INFO level).
    """
    global _done
    if _done is not None:
        return _done
    reason = _skip_reason()
    if reason:
        logger.info("CPU allocator left as it is: %s.", reason)
        _done = False
        return _done
    libc = ctypes.CDLL(None)
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success and 0 on error
    if not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, _INT_MAX)):
        logger.warning(
            "glibc refused the malloc settings (mallopt failed); CPU inference may be slower. "
            "Set MASK2FORMER_KEEP_FREED_MEMORY=0 to silence this."
        )
        _done = False
        return _done
    logger.info(
        "CPU allocator: freed memory is kept for reuse (glibc mmap off, no trimming); "
        "MASK2FORMER_KEEP_FREED_MEMORY=0 turns this off."
    )
    _done = True
    return _done
