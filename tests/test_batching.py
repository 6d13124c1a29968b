"""The one batching helper (predictor, demo images and video frames)."""

import pytest

from mask2former.utils.batching import batched


def test_batches_are_consecutive_and_lazy():
    read = []

    def items():
        for index in range(5):
            read.append(index)
            yield index

    batches = batched(items(), 2)
    assert next(batches) == [0, 1] and read == [0, 1]
    assert list(batches) == [[2, 3], [4]]
    assert list(batched([], 3)) == []


def test_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        next(batched([1], 0))
