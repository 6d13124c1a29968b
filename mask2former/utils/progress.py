"""A tqdm progress bar (iterations, ETA, loss, learning rate) for detectron2 trainers."""

from typing import Optional

from detectron2.engine import HookBase
from tqdm import tqdm

__all__ = ["TqdmProgressHook"]


class TqdmProgressHook(HookBase):
    """Shows training progress as a tqdm bar: iteration, elapsed time, ETA, loss and LR.

    Register it with ``trainer.register_hooks([TqdmProgressHook()])`` or return it from a
    trainer's ``build_hooks``; only the main process should show it.
    """

    def __init__(self, *, description: str = "training", refresh_every: int = 1):
        """
        Args:
            description: text in front of the bar.
            refresh_every: update the loss / LR shown every this many iterations.
        """
        self._description = description
        self._refresh_every = max(1, refresh_every)
        self._bar: Optional[tqdm] = None

    def before_train(self):
        self._bar = tqdm(
            total=self.trainer.max_iter,
            initial=self.trainer.start_iter,
            desc=self._description,
            unit="it",
            dynamic_ncols=True,
        )

    def after_step(self):
        if self._bar is None:
            return
        self._bar.update(1)
        if self.trainer.iter % self._refresh_every:
            return
        storage = self.trainer.storage
        shown = {}
        for key, label in (("total_loss", "loss"), ("lr", "lr")):
            if key in storage.histories():
                shown[label] = f"{storage.history(key).latest():.3g}"
        if shown:
            self._bar.set_postfix(shown, refresh=False)

    def after_train(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
