"""Checks of the downloaded files a preparation function reads."""

import os

from ..datasets.catalog_utils import DatasetFilesMissingError

__all__ = ["require_input"]


def require_input(path: str, what: str, how: str) -> None:
    """Raise :class:`DatasetFilesMissingError` naming ``path`` and ``how`` to get it."""
    if not os.path.exists(path):
        raise DatasetFilesMissingError(f"{what} not found: {path} does not exist. {how}")
