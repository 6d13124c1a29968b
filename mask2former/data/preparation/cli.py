"""Shared behaviour of the preparation scripts under ``datasets/``."""

import functools
import sys
from typing import Callable

from ..datasets.catalog_utils import DatasetFilesMissingError

__all__ = ["exit_on_missing_inputs"]


def exit_on_missing_inputs(main: Callable[[], None]) -> Callable[[], None]:
    """Decorate a script's ``main`` so that missing inputs end it with the error's message
    (exit status 1) instead of a traceback."""

    @functools.wraps(main)
    def wrapped() -> None:
        try:
            main()
        except DatasetFilesMissingError as error:
            sys.exit(f"error: {error}")

    return wrapped
