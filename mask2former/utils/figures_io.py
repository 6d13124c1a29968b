"""Files in and out of the evaluation tools (``tools/evaluate_*.py``): JSON inputs read with a
message that names the file, and the figures as JSON, written to ``--output`` atomically."""

import json
import os
from typing import Any, Dict, Optional

from .atomic_io import atomic_open

__all__ = ["InputError", "check_output_file", "read_json_file", "write_figures"]


class InputError(ValueError):
    """What the command line names (a file, a data set) cannot be used; the message says
    which and why."""


def read_json_file(path: str, what: str) -> Any:
    """The content of the JSON file ``path``, described as ``what`` ("results file") in the
    messages.

    Raises:
        InputError: the file is missing, unreadable or not JSON.
    """
    if not os.path.isfile(path):
        raise InputError(f"{what} {path!r} does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{what} {path!r} is not readable JSON: {error}") from error


def check_output_file(path: Optional[str]) -> None:
    """Before any work: the folder of ``--output`` (when given) exists.

    Raises:
        InputError: it does not.
    """
    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise InputError(f"--output {path!r}: its folder does not exist")


def write_figures(figures: Dict[str, Any], output: Optional[str]) -> str:
    """``figures`` as JSON text, also written to ``output`` when given; the tool prints it."""
    text = json.dumps(figures, indent=2)
    if output:
        with atomic_open(output, "w") as f:
            f.write(text + "\n")
    return text
