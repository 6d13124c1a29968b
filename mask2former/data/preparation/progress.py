"""Progress reporting shared by the preparation functions."""

from typing import Iterable, Optional

from tqdm import tqdm

__all__ = ["progress"]


def progress(iterable: Iterable, desc: str, total: Optional[int] = None, enabled: bool = True):
    """Wrap ``iterable`` in a tqdm progress bar (or return it unchanged when not ``enabled``)."""
    if not enabled:
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit="img")
