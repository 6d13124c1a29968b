"""Training hooks of Mask2Former's trainer."""

from detectron2.engine import HookBase

from mask2former.data.bad_samples import merge_across_processes

__all__ = ["BadSampleHook"]


class BadSampleHook(HookBase):
    """Puts the number of bad training samples met so far in the event storage
    (``[metric]bad_samples``, in the training log once it is not zero) and, with several
    training processes, merges their reports.

    Each process replaces and logs the bad samples it meets itself
    (:mod:`mask2former.data.bad_samples`). Every ``period`` iterations and at the last one, the
    processes exchange their reports: the main process logs the files first met by the others,
    the count covers all processes, and the threshold ``DATALOADER.MAX_BAD_SAMPLE_FRACTION``
    applies to the bad files of all of them (every process stops at the same iteration). The
    count is put in the storage at those iterations only, so that the log writer, which shows
    the median of a window of ``period`` iterations, shows the current total.

    Does nothing when the trainer's data loader keeps no ``bad_samples`` log.
    """

    def __init__(self, period: int = 20):
        """
        Args:
            period: iterations between two reports; the period of the log writer
                (``PeriodicWriter``, 20 in ``DefaultTrainer``).
        """
        self._period = period

    def after_step(self):
        log = getattr(self.trainer.data_loader, "bad_samples", None)
        next_iter = self.trainer.iter + 1
        if log is None or (next_iter % self._period and next_iter != self.trainer.max_iter):
            return
        merge_across_processes(log)
        if log.total_count:
            self.trainer.storage.put_scalar(
                "[metric]bad_samples", log.total_count, smoothing_hint=False
            )
