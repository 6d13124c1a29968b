"""Training hooks of Mask2Former's trainer."""

import json
import logging
import math
import os
from typing import Optional

from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.engine.hooks import BestCheckpointer
from detectron2.utils import comm

from mask2former.data.bad_samples import merge_across_processes

from ..utils.atomic_io import atomic_open
from .evaluation import _evaluations
from .interrupt import save_checkpoint_now

__all__ = ["BadSampleHook", "BestCheckpointHook", "best_checkpoint_metric"]

logger = logging.getLogger(__name__)


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


# The headline metric of each output, as Detectron2's evaluators name it in the results.
_HEADLINE_METRICS = {"PANOPTIC_ON": "panoptic_seg/PQ", "INSTANCE_ON": "segm/AP"}


def best_checkpoint_metric(cfg: CfgNode) -> str:
    """``SOLVER.BEST_CHECKPOINTER.METRIC``, or when it is empty the headline metric of the
    first test data set: panoptic PQ, else mask AP, else mIoU (IoU for the Cityscapes script),
    prefixed by the data set's name when there are several (as ``DefaultTrainer.test`` keys
    the results then).

    Raises:
        ValueError: SOLVER.BEST_CHECKPOINTER is on with a setting it cannot work with.
    """
    best = cfg.SOLVER.BEST_CHECKPOINTER
    if best.MODE not in ("max", "min"):
        raise ValueError(f"SOLVER.BEST_CHECKPOINTER.MODE must be 'max' or 'min', got {best.MODE!r}")
    if cfg.TEST.EVAL_PERIOD <= 0:
        raise ValueError(
            "SOLVER.BEST_CHECKPOINTER.ENABLED needs evaluations during training: set "
            f"TEST.EVAL_PERIOD > 0 (it is {cfg.TEST.EVAL_PERIOD})."
        )
    if not cfg.DATASETS.TEST:
        raise ValueError("SOLVER.BEST_CHECKPOINTER.ENABLED needs a test data set (DATASETS.TEST).")
    if best.METRIC:
        return best.METRIC
    dataset = cfg.DATASETS.TEST[0]
    evaluated, _, evaluator_type = _evaluations(cfg, dataset)
    flags = [e.flag for e in evaluated]
    flag = next((f for f in ("PANOPTIC_ON", "INSTANCE_ON") if f in flags), None)
    if flag is not None:
        metric = _HEADLINE_METRICS[flag]
    else:
        metric = "sem_seg/IoU" if evaluator_type.startswith("cityscapes") else "sem_seg/mIoU"
    return f"{dataset}/{metric}" if len(cfg.DATASETS.TEST) > 1 else metric


class BestCheckpointHook(BestCheckpointer):
    """Detectron2's ``BestCheckpointer`` (``model_best.pth``: the weights of the best evaluation
    so far by one metric), set by ``SOLVER.BEST_CHECKPOINTER``, with what it lacks:

    - ``--resume`` keeps the best so far: its value and iteration are written next to the
      weights (``model_best.json``) and read back, so a worse evaluation after resuming does
      not replace them;
    - a metric the evaluations do not report stops training at the first evaluation (after
      writing a checkpoint to resume from) with the names they do report, instead of a warning
      at every evaluation and no ``model_best.pth`` at the end;
    - it saves through the trainer's checkpointer (atomic files), without pointing
      ``last_checkpoint`` at ``model_best.pth`` (Detectron2's hook does, so that ``--resume``
      would go back to an older iteration).

    Put it after the evaluation hooks.
    """

    STATE_FILE = "model_best.json"

    def __init__(self, eval_period: int, metric: str, mode: str):
        # the checkpointer is the trainer's, taken in before_train
        super().__init__(eval_period, checkpointer=None, val_metric=metric, mode=mode)
        self._mode = mode

    def _state_path(self) -> str:
        return os.path.join(self._checkpointer.save_dir, self.STATE_FILE)

    def before_train(self):
        self._checkpointer = self.trainer.checkpointer
        path = self._state_path()
        if self.trainer.start_iter == 0 or not os.path.isfile(path):
            return
        try:
            with open(path) as f:
                state = json.load(f)
            best = (state["metric"], state["mode"], float(state["value"]), int(state["iteration"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(
                "%s is unreadable (%s): the next evaluation becomes the best, whatever its value.",
                path,
                error,
            )
            return
        if best[:2] == (self._val_metric, self._mode):
            self.best_metric, self.best_iter = best[2], best[3]
            logger.info(
                "Best %s so far: %.5f at iteration %d (%s).", best[0], best[2], best[3], path
            )

    def _missing_metric_message(self) -> Optional[str]:
        latest = self.trainer.storage.latest()
        if self._val_metric in latest:
            return None
        reported = sorted(
            name
            for name, (_, iteration) in latest.items()
            if iteration == self.trainer.iter and "/" in name and "-" not in name
        )
        return (
            f"SOLVER.BEST_CHECKPOINTER.METRIC {self._val_metric!r} is not among the metrics "
            f"of the evaluation at iteration {self.trainer.iter}: {', '.join(reported) or 'none'}"
        )

    def _best_checking(self):
        # only the main process has the evaluation results; all decide together
        problem = self._missing_metric_message() if comm.is_main_process() else None
        problem = next((p for p in comm.all_gather(problem) if p), None)
        if problem:
            checkpoint = save_checkpoint_now(self.trainer)
            raise ValueError(
                f"{problem}. Training stopped after writing {checkpoint}: set the key to one "
                "of them and continue with --resume."
            )
        if not comm.is_main_process():
            return
        value, iteration = self.trainer.storage.latest()[self._val_metric]
        if not math.isfinite(value):
            logger.warning(
                "%s is %s at iteration %d: not a best.", self._val_metric, value, iteration
            )
            return
        if self.best_metric is not None and not self._compare(value, self.best_metric):
            logger.info(
                "%s = %.5f, not better than %.5f at iteration %d: model_best.pth stays.",
                self._val_metric,
                value,
                self.best_metric,
                self.best_iter,
            )
            return
        # not the checkpoint --resume loads: that stays the latest one
        self._checkpointer.save(self._file_prefix, tag_last_checkpoint=False, iteration=iteration)
        logger.info(
            "%s = %.5f at iteration %d: the best so far.", self._val_metric, value, iteration
        )
        self.best_metric, self.best_iter = value, iteration
        state = {
            "metric": self._val_metric,
            "mode": self._mode,
            "value": value,
            "iteration": iteration,
        }
        with atomic_open(self._state_path(), "w") as f:
            json.dump(state, f, indent=2)
