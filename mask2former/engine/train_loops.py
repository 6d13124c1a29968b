"""Training loops that stop on a non-finite loss with a message a person can act on.

Detectron2's ``SimpleTrainer`` raises a ``FloatingPointError`` on a non-finite total loss that
lists every term, and says nothing about where to continue from. The loops here check the loss
terms of every step before the optimizer step (so no NaN reaches the weights) and raise
:class:`NonFiniteLossError`, naming the non-finite terms, the iteration and the last checkpoint,
written before the loss went bad, which ``--resume`` continues from.

With float16 AMP, the gradient scaler is in charge: a non-finite loss or gradient makes it skip
the optimizer step and lower the loss scale, which is how loss scaling works, not an error.
:class:`CheckedAMPTrainer` counts such steps in the event storage
(``[metric]amp_skipped_steps``, shown in the training log) and goes on.
"""

import math
import os
from typing import Mapping, Optional

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import get_event_storage

__all__ = [
    "CheckedAMPTrainer",
    "CheckedSimpleTrainer",
    "NonFiniteLossCheck",
    "NonFiniteLossError",
    "non_finite_loss_message",
]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message says which, when, and how to go on."""


def _last_checkpoint(checkpoint_dir: str) -> Optional[str]:
    """The checkpoint that ``--resume`` would load: Detectron2's checkpointer names it in
    ``{checkpoint_dir}/last_checkpoint``."""
    tag = os.path.join(checkpoint_dir, "last_checkpoint")
    if not checkpoint_dir or not os.path.isfile(tag):
        return None
    with open(tag) as f:
        name = f.read().strip()
    return os.path.join(checkpoint_dir, name) if name else None


def non_finite_loss_message(
    loss_dict: Mapping[str, torch.Tensor], iteration: int, checkpoint_dir: str
) -> str:
    """The message of :class:`NonFiniteLossError` for one step's loss terms."""
    values = {name: float(value.detach()) for name, value in loss_dict.items()}
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    terms = ", ".join(f"{name} = {values[name]}" for name in bad)
    checkpoint = _last_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        resume = (
            f"The last good checkpoint is {checkpoint} (written before this iteration): "
            "continue from it with --resume"
        )
    else:
        resume = (
            f"No checkpoint had been written to {checkpoint_dir or 'OUTPUT_DIR'} yet, so the "
            "run has to start again"
        )
    return (
        f"Non-finite loss at iteration {iteration}: {terms} ({len(values) - len(bad)} other "
        "loss terms are finite). Training stopped before the optimizer step, so the weights "
        f"are still finite. {resume} once the cause is fixed, e.g. a lower SOLVER.BASE_LR, "
        "gradient clipping (SOLVER.CLIP_GRADIENTS), or a look at this iteration's data."
    )


class NonFiniteLossCheck:
    """Mixin for Detectron2 training loops (``SimpleTrainer`` and its subclasses): raises
    :class:`NonFiniteLossError` when a loss term is not finite, unless a gradient scaler is
    enabled (``grad_scaler`` attribute), which then skips the step.

    The check runs where the loop writes its metrics, between backward and the optimizer step;
    it needs the loop's synchronous metrics writing (``async_write_metrics`` off, the default).
    """

    def __init__(self, *args, checkpoint_dir: str = "", **kwargs):
        """
        Args:
            args, kwargs: those of the training loop class.
            checkpoint_dir: where the checkpoints are written (``OUTPUT_DIR``), to name the last
                one in the error message.
        """
        super().__init__(*args, **kwargs)
        self.checkpoint_dir = checkpoint_dir

    def _scales_loss(self) -> bool:
        grad_scaler = getattr(self, "grad_scaler", None)
        return grad_scaler is not None and grad_scaler.is_enabled()

    def _write_metrics(
        self,
        loss_dict: Mapping[str, torch.Tensor],
        data_time: float,
        prefix: str = "",
        iter: Optional[int] = None,
    ) -> None:
        values = torch.stack([value.detach().float().reshape(()) for value in loss_dict.values()])
        if not bool(torch.isfinite(values).all()):
            if self._scales_loss():
                return  # the gradient scaler skips this step; CheckedAMPTrainer counts it
            iteration = self.iter if iter is None else iter
            raise NonFiniteLossError(
                non_finite_loss_message(loss_dict, iteration, self.checkpoint_dir)
            )
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class CheckedSimpleTrainer(NonFiniteLossCheck, SimpleTrainer):
    """Detectron2's float32 ``SimpleTrainer`` with :class:`NonFiniteLossCheck`."""


class CheckedAMPTrainer(NonFiniteLossCheck, AMPTrainer):
    """Detectron2's ``AMPTrainer`` with :class:`NonFiniteLossCheck`, counting the steps that its
    gradient scaler skips (those after which the loss scale went down)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped_steps = 0
        self._scale: Optional[float] = None

    def run_step(self) -> None:
        if not self.grad_scaler.is_enabled():
            super().run_step()
            return
        scale_before = self.grad_scaler.get_scale() if self._scale is None else self._scale
        super().run_step()
        self._scale = self.grad_scaler.get_scale()
        if self._scale < scale_before:
            self.skipped_steps += 1
        if self.skipped_steps:
            get_event_storage().put_scalar(
                "[metric]amp_skipped_steps", self.skipped_steps, smoothing_hint=False
            )
