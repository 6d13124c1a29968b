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

import signal
import threading

import torch.utils.data

__all__ = ["STOP_SIGNALS", "WORKER_GRACE_S", "in_main_thread", "install_worker_stop_handlers"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# How long a DataLoader worker keeps serving after the first SIGTERM or SIGINT: time for the
# training process to finish the batch it waits for (it writes its checkpoint without them).
# It also delays by as much the exit of a process that ends with live workers, whose
# ``Process.terminate()`` is then their first signal.
WORKER_GRACE_S = 10.0

_installed_in_process = False


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
