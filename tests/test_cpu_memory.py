"""Tests of the CPU allocator setting used by the entry points."""

import logging
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from mask2former.utils import cpu_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def fresh(monkeypatch):
    """The module as if nothing had called it in this process, with a clean environment."""
    monkeypatch.setattr(cpu_memory, "_done", None)
    for name in list(os.environ):
        if name.startswith("MALLOC_") or name in ("LD_PRELOAD", "MASK2FORMER_KEEP_FREED_MEMORY"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    "variable, value, reason",
    [
        ("MASK2FORMER_KEEP_FREED_MEMORY", "0", "MASK2FORMER_KEEP_FREED_MEMORY=0"),
        ("MALLOC_ARENA_MAX", "2", "already tuned by the environment (MALLOC_ARENA_MAX)"),
        ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2", "another allocator is preloaded"),
    ],
)
def test_left_alone_when_turned_off_or_tuned_elsewhere(fresh, caplog, variable, value, reason):
    fresh.setenv(variable, value)

    def no_mallopt(*args):
        raise AssertionError("mallopt must not be called")

    fresh.setattr(cpu_memory.ctypes, "CDLL", no_mallopt)
    with caplog.at_level(logging.INFO, logger=cpu_memory.__name__):
        assert cpu_memory.keep_freed_memory() is False
        assert cpu_memory.keep_freed_memory() is False  # decided once, logged once
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and reason in messages[0]


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_large_blocks_are_kept_instead_of_mapped_each_time():
    # In a child process, so that this one keeps its allocator: allocate and free a 64 MiB
    # block; glibc maps it (mallinfo2().hblkhd) and unmaps it when freed unless the setting
    # is on, and then it stays in the heap as free space (fordblks).
    script = textwrap.dedent(
        """
        import ctypes, sys
        import torch
        from mask2former.utils.cpu_memory import keep_freed_memory

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = MallInfo2

        def mapped_after_allocating():
            block = torch.ones(16 * 2**20)  # 64 MiB
            mapped = libc.mallinfo2().hblkhd
            del block
            return mapped

        before = mapped_after_allocating()
        tuned = keep_freed_memory()
        after = mapped_after_allocating()
        # freed, the block stays in the heap for the next allocation
        print(before, tuned, after, libc.mallinfo2().fordblks)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
        check=True,
    )
    before, tuned, after, free_in_heap = result.stdout.split()
    assert tuned == "True"
    assert int(before) >= 64 * 2**20  # default glibc: the block was mmapped
    assert int(after) < 64 * 2**20  # tuned: it comes from the heap
    assert int(free_in_heap) >= 64 * 2**20  # and its memory is kept after it is freed
