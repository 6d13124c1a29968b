"""Reading a JSON file with errors that name it."""

import json
import os
from typing import Any

__all__ = ["read_json"]


def read_json(path: str, what: str = "") -> Any:
    """The content of the JSON file ``path``, named "``what`` ``path``" in the messages
    (e.g. what="YouTube-VIS annotation file").

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not valid JSON.
    """
    name = f"{what} {path}" if what else str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name} does not exist.")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name} is not valid JSON ({error}).") from error
