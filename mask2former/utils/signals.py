"""SIGTERM and SIGINT, the signals that stop training, in DataLoader worker processes.

SLURM sends SIGTERM to every process of a job, and Ctrl-C sends SIGINT to every process of the
terminal's group: the data loaders' workers get them too. A worker that dies of it makes
PyTorch raise "DataLoader worker ... is killed by signal" in the training process, at whatever
it is doing, or fail the next batch, before the training process can finish its iteration and
write a checkpoint (:mod:`mask2former.engine.interrupt`). So a worker that gets the first of
these signals goes on serving for :data:`WORKER_GRACE_S` seconds, time for the training
process to stop and shut it down as usual, and then exits cleanly (exit status 0, which PyTorch
does not report); a second signal (a second Ctrl-C, or ``Process.terminate()``) ends it at once.
"""

import os
import signal
import threading
from typing import Any, Callable, Dict, List, Optional

import torch.utils.data

__all__ = [
    "STOP_SIGNALS",
    "WORKER_GRACE_S",
    "in_main_thread",
    "install_worker_stop_handlers",
    "set_stop_handlers",
]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# How long a DataLoader worker keeps serving after the first SIGTERM or SIGINT: time for the
# training process to finish the batch it waits for (it writes its checkpoint without them).
# It also delays by as much the exit of a process that ends with live workers, whose
# ``Process.terminate()`` is then their first signal.
WORKER_GRACE_S = 10.0

_installed_in_process = False

# The handlers that each set_stop_handlers(handler) in force replaced, innermost last.
_replaced: List[Dict[int, Any]] = []


def set_stop_handlers(handler: Optional[Callable]) -> None:
    """Make ``handler`` the handler of SIGTERM and SIGINT in this process (main thread only),
    or with None put back the handlers that the last such call replaced.

    A process forked meanwhile (a ``multiprocessing.Pool`` worker, such as panopticapi's in
    the evaluation during training, or a DataLoader worker) starts with the handlers from
    before the first such call, not with ``handler``: it must still die of
    ``Process.terminate()``, which its parent then joins (a Pool's workers that inherited a
    handler that only records the signal hung the evaluation).
    """
    if handler is None:
        if _replaced:
            for signum, previous in _replaced.pop().items():
                signal.signal(signum, previous)
        return
    _replaced.append({signum: signal.signal(signum, handler) for signum in STOP_SIGNALS})


def _restore_in_forked_child() -> None:
    while _replaced:
        set_stop_handlers(None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restore_in_forked_child)


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _stop_worker(signum, frame) -> None:
    # PyTorch's worker loop ends quietly on KeyboardInterrupt
    raise KeyboardInterrupt


def _first_stop_signal(signum, frame) -> None:
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _stop_worker)  # the next one: at once
    signal.signal(signal.SIGALRM, _stop_worker)
    signal.setitimer(signal.ITIMER_REAL, WORKER_GRACE_S)


def install_worker_stop_handlers() -> None:
    """In a DataLoader worker process (else nothing), once per process: the first SIGTERM or
    SIGINT ends the worker :data:`WORKER_GRACE_S` seconds later, a second one at once. Called
    by the dataset mapper wrappers of :mod:`mask2former.data.bad_samples` on each sample, so
    that every worker of the training and evaluation loaders has them from its first sample."""
    global _installed_in_process
    if _installed_in_process or torch.utils.data.get_worker_info() is None:
        return
    if not in_main_thread() or not hasattr(signal, "setitimer"):
        return
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _first_stop_signal)
    _installed_in_process = True
