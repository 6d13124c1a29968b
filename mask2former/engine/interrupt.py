"""Training that stops on SIGTERM or Ctrl-C with a checkpoint of the iteration it reached.

Clusters stop jobs with SIGTERM: SLURM at the time limit or on preemption, Kubernetes on
eviction, ``docker stop``; users press Ctrl-C (SIGINT). Detectron2's trainer dies at once and
the iterations since the last periodic checkpoint are lost (``SOLVER.CHECKPOINT_PERIOD`` is
5000 iterations in the official configs: hours of 8 GPUs). Here:

- the first SIGTERM or SIGINT lets the current iteration finish (an evaluation that runs in it
  too); then every training process agrees to stop at that same iteration, the main process
  writes ``model_{iteration:07d}.pth`` (atomically) and points ``last_checkpoint`` at it, and
  training ends with :class:`TrainingInterrupted`, whose message says to continue with
  ``--resume`` (the same iteration, learning rate and optimizer state). ``train_net.py`` exits
  with status 128 + the signal's number, as a process killed by it would (143 for SIGTERM).
- a second Ctrl-C stops at once, without a checkpoint.
- the data loaders' worker processes, which SLURM's SIGTERM and the terminal's SIGINT reach
  too, keep serving for a while instead of dying with an error that would stop the training
  process first (:mod:`mask2former.utils.signals`); the training process shuts them down
  before it exits.
- with ``--num-gpus N``, the launching process passes a SIGTERM or SIGINT that only it received
  (``docker stop``, ``kill PID``) on to the training processes
  (:func:`forward_stop_signals_to_children`) and waits for them.

On SLURM, ``#SBATCH --signal=TERM@120`` sends the SIGTERM two minutes before the time limit,
which leaves time for an iteration and the checkpoint.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..utils.signals import in_main_thread, set_stop_handlers

__all__ = [
    "CheckpointOnInterrupt",
    "TrainingInterrupted",
    "forward_stop_signals_to_children",
    "save_checkpoint_now",
]

logger = logging.getLogger(__name__)


def save_checkpoint_now(trainer) -> str:
    """Write ``model_{iteration:07d}.pth`` for the iteration ``trainer`` is at, with the
    trainer's checkpointer (the main process writes, atomically, and points
    ``last_checkpoint`` at it), and wait for every process; returns the file's path.
    ``--resume`` continues from the next iteration."""
    name = f"model_{trainer.iter:07d}"
    trainer.checkpointer.save(name, iteration=trainer.iter)
    comm.synchronize()
    return os.path.join(trainer.checkpointer.save_dir, f"{name}.pth")


class TrainingInterrupted(BaseException):
    """Training stopped on a signal, after writing a checkpoint of the iteration it reached.

    A ``BaseException``, as ``KeyboardInterrupt``: a stop that was asked for, which Detectron2's
    trainer should not log as a failure.

    Attributes:
        signum: the signal's number.
        iteration: the last iteration done (``--resume`` starts at the next one).
        checkpoint: the file written (by the main process).
    """

    def __init__(self, signum: int, iteration: int, checkpoint: str):
        self.signum = signum
        self.iteration = iteration
        self.checkpoint = checkpoint
        super().__init__(
            f"Training stopped by {signal.Signals(signum).name} after iteration {iteration}; "
            f"its checkpoint is {checkpoint}. Run the same command with --resume to continue "
            "from there."
        )

    @property
    def exit_status(self) -> int:
        """The exit status of a process killed by the signal (128 + its number)."""
        return 128 + self.signum


class _StopRequest:
    """Records the first SIGTERM or SIGINT instead of dying; a second SIGINT raises
    ``KeyboardInterrupt`` at once (SIGTERMs never do: with Ctrl-C under ``--num-gpus N`` a
    training process gets the terminal's SIGINT and its launcher's SIGTERM)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._interrupted = False
        self._installed = False

    def install(self) -> bool:
        """Replace the handlers; False (nothing done) outside the main thread, where Python
        cannot set them. Processes forked meanwhile keep the old ones
        (:func:`mask2former.utils.signals.set_stop_handlers`)."""
        if not in_main_thread():
            return False
        set_stop_handlers(self._handle)
        self._installed = True
        return True

    def uninstall(self) -> None:
        if self._installed:
            set_stop_handlers(None)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self._interrupted:
                self.uninstall()
                raise KeyboardInterrupt
            self._interrupted = True
        if self.signum is None:
            self.signum = signum


class CheckpointOnInterrupt(HookBase):
    """The trainer's hook for SIGTERM and SIGINT (see the module docstring). Put it after the
    hooks that save or evaluate: it may end training in ``after_step``.

    With several training processes, they agree every iteration, through an all-reduce of one
    integer over a gloo group, on whether any of them got a signal, so that all stop at the
    same iteration.
    """

    def __init__(self):
        self._request = _StopRequest()
        self._group = None
        self._announced = False

    def before_train(self):
        if not self._request.install():
            logger.warning(
                "Training runs outside the main thread: SIGTERM and Ctrl-C stop it without a "
                "checkpoint."
            )
        if comm.get_world_size() > 1:
            self._group = dist.new_group(backend="gloo")  # every process, here: a collective

    def _agreed_signal(self) -> int:
        local = self._request.signum or 0
        if local and not self._announced:
            self._announced = True
            logger.warning(
                "%s received: training stops after this iteration, with a checkpoint (a second "
                "Ctrl-C stops at once, without one).",
                signal.Signals(local).name,
            )
        if self._group is None:
            return local
        agreed = torch.tensor([local], dtype=torch.int64)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=self._group)
        return int(agreed.item())

    def after_step(self):
        signum = self._agreed_signal()
        iteration = self.trainer.iter
        if not signum or iteration + 1 >= self.trainer.max_iter:
            return  # at the last iteration, model_final is written anyway
        checkpoint = save_checkpoint_now(self.trainer)
        close = getattr(self.trainer.data_loader, "close", None)
        if close is not None:  # its workers end now, not at exit
            close()
        raise TrainingInterrupted(signum, iteration, checkpoint)

    def after_train(self):
        self._request.uninstall()


@contextlib.contextmanager
def forward_stop_signals_to_children() -> Iterator[None]:
    """In the launching process of ``--num-gpus N``: a SIGTERM or SIGINT sent to it passes on,
    as SIGTERM, to its child processes (the training processes), which stop with a
    checkpoint; it keeps waiting for them. A second SIGINT raises ``KeyboardInterrupt``."""
    if not in_main_thread():
        yield
        return
    interrupted = []

    def forward(signum, frame):
        if signum == signal.SIGINT:
            if interrupted:
                raise KeyboardInterrupt
            interrupted.append(signum)
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)

    set_stop_handlers(forward)
    try:
        yield
    finally:
        set_stop_handlers(None)
