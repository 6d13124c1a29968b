"""Training hooks of Mask2Former's trainer."""

from detectron2.engine import HookBase
from detectron2.utils import comm

from mask2former.data.bad_samples import merge_across_processes

__all__ = ["BadSampleHook"]


class BadSampleHook(HookBase):
    """Puts the training loader's bad-sample count in the event storage
    (``[metric]bad_samples``, shown in the training log once it is not zero) and, with several
    training processes, merges their reports.

    Each process replaces and logs the bad samples it meets itself
    (:mod:`mask2former.data.bad_samples`). Every ``period`` iterations and at the last one, the
    processes exchange their reports: the main process logs the files first met by the others,
    the count covers all processes, and the threshold ``DATALOADER.MAX_BAD_SAMPLE_FRACTION``
    applies to the bad files of all of them (every process stops at the same iteration).

    Does nothing when the trainer's data loader keeps no ``bad_samples`` log.
    """

    def __init__(self, period: int = 20):
        """
        Args:
            period: iterations between two exchanges of reports between processes (the
                period of the training log's writer is a good choice).
        """
        self._period = period

    def after_step(self):
        log = getattr(self.trainer.data_loader, "bad_samples", None)
        if log is None:
            return
        next_iter = self.trainer.iter + 1
        if comm.get_world_size() > 1 and (
            next_iter % self._period == 0 or next_iter == self.trainer.max_iter
        ):
            merge_across_processes(log)
        if log.total_count:
            self.trainer.storage.put_scalar(
                "[metric]bad_samples", log.total_count, smoothing_hint=False
            )
