"""Training loops that stop on a non-finite loss with a message a person can act on.

Detectron2's ``SimpleTrainer`` raises a ``FloatingPointError`` on a non-finite total loss that
lists every term, and says nothing about where to continue from. The loops here check the loss
terms of every step before the optimizer step (so no NaN reaches the weights) and raise
:class:`NonFiniteLossError`, naming the non-finite terms, the iteration and the last checkpoint,
written before the loss went bad, which ``--resume`` continues from.

Every loop also sums the gradients of several batches per optimizer step when built with
``accumulation_steps`` > 1 (:class:`GradientAccumulation`; ``SOLVER.GRADIENT_ACCUMULATION_STEPS``).

With float16 AMP, the gradient scaler is in charge: a non-finite loss or gradient makes it skip
the optimizer step and lower the loss scale, which is how loss scaling works, not an error.
:class:`CheckedAMPTrainer` counts such steps in the event storage
(``[metric]amp_skipped_steps``, shown in the training log) and goes on.
"""

import contextlib
import math
import os
import time
from typing import ContextManager, Dict, List, Mapping, Optional

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "CheckedAMPTrainer",
    "CheckedSimpleTrainer",
    "GradientAccumulation",
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


class GradientAccumulation:
    """Mixin for Detectron2 training loops: one optimizer step per ``accumulation_steps``
    batches, their gradients summed.

    With ``accumulation_steps`` 1 the loop's own ``run_step`` runs unchanged. With K > 1 a step
    takes K batches from the data loader and runs forward and backward on each in turn (so only
    one batch's activations are alive at a time), each loss divided by K; the optimizer steps
    once. Under ``DistributedDataParallel`` the gradients are all-reduced only after the last
    batch (``no_sync`` before it). The metrics written are the K batches' average losses.

    Mask2Former's mask losses are divided by the number of target masks, averaged over the
    workers. Here that average is taken over the K batches of all workers, counted before the
    first forward (the model's ``count_targets``) and given to its criterion
    (``SetCriterion.normalized_by``): K accumulated batches on N workers train as one batch
    each on K x N workers would. A model without ``count_targets`` and ``criterion`` (not a
    Mask2Former meta-architecture) gets its losses averaged over the K batches as they are.

    Subclasses change how a batch's forward, backward and the optimizer step run through
    :meth:`_forward_context`, :meth:`_backward` and :meth:`_optimizer_step`.
    """

    def __init__(self, *args, accumulation_steps: int = 1, **kwargs):
        """
        Args:
            args, kwargs: those of the training loop class.
            accumulation_steps: batches per optimizer step (>= 1).
        """
        if not (isinstance(accumulation_steps, int) and accumulation_steps >= 1):
            raise ValueError(
                f"accumulation_steps (SOLVER.GRADIENT_ACCUMULATION_STEPS) must be an integer "
                f">= 1, got {accumulation_steps!r}."
            )
        super().__init__(*args, **kwargs)
        self.accumulation_steps = accumulation_steps

    def run_step(self) -> None:
        if self.accumulation_steps == 1:
            super().run_step()
            return
        assert self.model.training, "[GradientAccumulation] model was changed to eval mode!"
        start = time.perf_counter()
        batches = [next(self._data_loader_iter) for _ in range(self.accumulation_steps)]
        data_time = time.perf_counter() - start

        self.optimizer.zero_grad()
        sums: Dict[str, torch.Tensor] = {}
        with self._loss_normalization(batches):
            for index, batch in enumerate(batches):
                with self._gradient_sync(last=index == len(batches) - 1):
                    with self._forward_context():
                        loss_dict = self.model(batch)
                        if isinstance(loss_dict, torch.Tensor):
                            loss_dict = {"total_loss": loss_dict}
                        losses = sum(loss_dict.values()) / self.accumulation_steps
                    self._backward(losses)
                for name, value in loss_dict.items():
                    value = value.detach() / self.accumulation_steps
                    sums[name] = sums[name] + value if name in sums else value
                del loss_dict, losses
        self.after_backward()
        self._write_metrics(sums, data_time)
        self._optimizer_step()

    def _forward_context(self) -> ContextManager:
        """The context a batch's forward (and loss sum) runs in."""
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _optimizer_step(self) -> None:
        self.optimizer.step()

    def _gradient_sync(self, last: bool) -> ContextManager:
        """DistributedDataParallel's ``no_sync`` for every batch but the last of a step."""
        if last or not isinstance(self.model, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _loss_normalization(self, batches: List[object]) -> ContextManager:
        """The criterion's mask-loss normaliser for the step: target masks per batch, averaged
        over the step's batches on all workers (see the class docstring)."""
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        count_targets = getattr(model, "count_targets", None)
        criterion = getattr(model, "criterion", None)
        if count_targets is None or not hasattr(criterion, "normalized_by"):
            return contextlib.nullcontext()
        total = torch.tensor(float(sum(count_targets(batch) for batch in batches)))
        if comm.get_world_size() > 1:
            device = next(model.parameters()).device
            total = total.to(device)
            torch.distributed.all_reduce(total)
        batches_in_step = len(batches) * comm.get_world_size()
        return criterion.normalized_by(max(float(total) / batches_in_step, 1.0))


class CheckedSimpleTrainer(GradientAccumulation, NonFiniteLossCheck, SimpleTrainer):
    """Detectron2's float32 ``SimpleTrainer`` with :class:`NonFiniteLossCheck` and
    :class:`GradientAccumulation`."""


class CheckedAMPTrainer(GradientAccumulation, NonFiniteLossCheck, AMPTrainer):
    """Detectron2's ``AMPTrainer`` with :class:`NonFiniteLossCheck` and
    :class:`GradientAccumulation`, counting the steps that its gradient scaler skips (those
    after which the loss scale went down)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped_steps = 0
        self._scale: Optional[float] = None

    def _forward_context(self) -> ContextManager:
        return torch.autocast("cuda", dtype=self.precision)

    def _backward(self, loss: torch.Tensor) -> None:
        self.grad_scaler.scale(loss).backward()

    def _optimizer_step(self) -> None:
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

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
