"""Helpers of the benchmark scripts under tools/: peak memory, and settings measured each in a
fresh process (a process's peak memory only grows, so each setting needs its own)."""

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Any, Dict, Optional, Sequence

import torch

from .cpu_memory import keep_freed_memory

__all__ = [
    "add_setting_arguments",
    "machine_fields",
    "memory_label",
    "peak_memory_mib",
    "peak_rss_mib",
    "run_child",
    "start_setting",
]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(
    command: Sequence[str],
    what: str,
    *,
    cwd: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
) -> Any:
    """Run ``command`` (a benchmark script measuring one setting), which prints its result as
    JSON on its last line of output, and return that result; ``cwd`` and ``env`` as for
    ``subprocess.run``.

    Exits (``SystemExit``) with ``what`` and the end of the child's error output when it fails.
    """
    run = subprocess.run(list(command), capture_output=True, text=True, cwd=cwd, env=env)
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        sys.exit(f"{what} failed (exit status {run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads(lines[-1])


def add_setting_arguments(
    parser: argparse.ArgumentParser, child_type=int, child_choices: Optional[Sequence] = None
) -> None:
    """The options of a script that measures each setting in a child process: ``--threads``,
    ``--device`` and the hidden ``--child SETTING`` with which the script runs itself."""
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", type=child_type, choices=child_choices, help=argparse.SUPPRESS)


def start_setting(threads: int, device: str) -> torch.device:
    """What a child measuring one setting does first: torch's thread count, and on a CPU the
    allocator setting that train_net.py and the demo use (``keep_freed_memory``)."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    return device


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far, in MiB: allocated on a CUDA device (since the last
    ``torch.cuda.reset_peak_memory_stats``), the process's resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def memory_label(device: str) -> str:
    """What :func:`peak_memory_mib` measures on ``device``, for the reports' headers."""
    return "peak CUDA MiB" if torch.device(device).type == "cuda" else "peak RSS MiB"


def machine_fields(args: argparse.Namespace) -> Dict:
    """The report fields of :func:`add_setting_arguments`'s options, the config overrides
    (``--opts``) and the machine's core count."""
    return {
        "threads": args.threads,
        "device": args.device,
        "memory": memory_label(args.device),
        "opts": args.opts,
        "cpu_count": os.cpu_count(),
    }
