"""Where models run: the configured device, or the CPU with a warning."""

import logging

import pytest
import torch

from mask2former.utils.device import runnable_device


@pytest.mark.parametrize("configured", ["cuda", "cuda:1"])
def test_cuda_without_cuda_runs_on_the_cpu_with_a_warning(monkeypatch, caplog, configured):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="mask2former.utils.device"):
        assert runnable_device(configured) == torch.device("cpu")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert configured in record.getMessage() and "slower" in record.getMessage()


def test_cpu_is_kept_silently(caplog):
    with caplog.at_level(logging.DEBUG, logger="mask2former.utils.device"):
        assert runnable_device("cpu") == torch.device("cpu")
    assert caplog.records == []
