"""The poly learning-rate schedule resumes with the config's shape (a longer SOLVER.MAX_ITER)
and the checkpoint's position and learning rates."""

import logging
import math

import pytest
import torch
from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR as DeepLabWarmupPolyLR

from mask2former.engine.lr_scheduler import WarmupPolyLR


def _scheduler(cls, max_iters, lr=0.1, warmup_iters=0):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=lr)
    scheduler = cls(optimizer, max_iters, warmup_iters=warmup_iters, power=0.9)
    return optimizer, scheduler


def _run(optimizer, scheduler, steps):
    for _ in range(steps):
        optimizer.step()
        scheduler.step()


def _state_after(cls, max_iters, steps, lr=0.1):
    optimizer, scheduler = _scheduler(cls, max_iters, lr=lr)
    _run(optimizer, scheduler, steps)
    return optimizer.state_dict(), scheduler.state_dict()


def test_detectron2s_schedule_cannot_be_extended_on_resume():
    """What this module fixes: the checkpoint's max_iters wins, and the step past it fails."""
    optimizer_state, scheduler_state = _state_after(DeepLabWarmupPolyLR, 10, steps=10)
    optimizer, scheduler = _scheduler(DeepLabWarmupPolyLR, 20)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    assert scheduler.max_iters == 10
    with pytest.raises(ValueError, match="math domain error"):
        _run(optimizer, scheduler, 1)


def test_a_longer_schedule_continues_from_the_checkpoints_iteration(caplog):
    optimizer_state, scheduler_state = _state_after(WarmupPolyLR, 10, steps=10)
    optimizer, scheduler = _scheduler(WarmupPolyLR, 20)
    optimizer.load_state_dict(optimizer_state)
    with caplog.at_level(logging.WARNING, logger="mask2former"):
        scheduler.load_state_dict(scheduler_state)
    assert scheduler.max_iters == 20 and scheduler.last_epoch == 10
    assert "SOLVER.MAX_ITER 10 -> 20" in caplog.text and "iteration 10" in caplog.text
    _run(optimizer, scheduler, 5)
    expected = 0.1 * math.pow(1 - 15 / 20, 0.9)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    _run(optimizer, scheduler, 5)  # to the new end, no error
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_the_same_schedule_resumes_silently_and_exactly(caplog):
    optimizer_state, scheduler_state = _state_after(WarmupPolyLR, 20, steps=7)
    reference_optimizer, reference = _scheduler(WarmupPolyLR, 20)
    _run(reference_optimizer, reference, 12)
    optimizer, scheduler = _scheduler(WarmupPolyLR, 20)
    optimizer.load_state_dict(optimizer_state)
    with caplog.at_level(logging.WARNING, logger="mask2former"):
        scheduler.load_state_dict(scheduler_state)
    _run(optimizer, scheduler, 5)
    assert caplog.text == ""
    assert optimizer.param_groups[0]["lr"] == reference_optimizer.param_groups[0]["lr"]


def test_a_changed_base_lr_is_reported_and_the_checkpoints_kept(caplog):
    optimizer_state, scheduler_state = _state_after(WarmupPolyLR, 20, steps=4, lr=0.1)
    optimizer, scheduler = _scheduler(WarmupPolyLR, 20, lr=0.5)
    optimizer.load_state_dict(optimizer_state)
    with caplog.at_level(logging.WARNING, logger="mask2former"):
        scheduler.load_state_dict(scheduler_state)
    assert scheduler.base_lrs == [0.1]
    assert "base learning rates (0.1) differ from the config's (0.5)" in caplog.text
