"""Helpers of the benchmark scripts under tools/: peak memory, and settings measured each in a
fresh process (a process's peak memory only grows, so each setting needs its own)."""

import json
import resource
import subprocess
import sys
from typing import Dict, Sequence

__all__ = ["peak_rss_mib", "run_child"]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(command: Sequence[str], what: str) -> Dict:
    """Run ``command`` (a benchmark script measuring one setting), which prints its result as
    JSON on its last line of output, and return that result.

    Exits (``SystemExit``) with ``what`` and the end of the child's error output when it fails.
    """
    run = subprocess.run(list(command), capture_output=True, text=True)
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        sys.exit(f"{what} failed (exit status {run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads(lines[-1])
