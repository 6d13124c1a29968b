"""Splitting a stream of items into batches."""

from typing import Iterable, Iterator, List, TypeVar

__all__ = ["batched"]

Item = TypeVar("Item")


def batched(items: Iterable[Item], batch_size: int) -> Iterator[List[Item]]:
    """Consecutive lists of ``batch_size`` items (the last one may be shorter).

    Items are read lazily, so at most one batch is held at a time: ``items`` may be a long
    generator (video frames). ``itertools.batched`` from Python 3.12, on older versions too.

    Raises:
        ValueError: ``batch_size`` is below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    batch: List[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
