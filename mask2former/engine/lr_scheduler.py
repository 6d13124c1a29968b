"""The learning-rate schedule, resumable with a longer or changed schedule.

Mask2Former's configs use Detectron2's DeepLab ``WarmupPolyLR``. Like every torch scheduler it
saves all its attributes in the checkpoint, the schedule's shape included, and ``--resume``
restores them over what the config says. Extending a run (``SOLVER.MAX_ITER`` raised, then
``--resume``) therefore kept the old ``max_iters``, and the first step past it failed with
"math domain error" (a negative number to a fractional power). :class:`WarmupPolyLR` here
takes the shape (``SOLVER.MAX_ITER``, the warm-up, the power, the constant ending) from the
config and only the position (the iteration) and the learning rates from the checkpoint,
with a warning naming what changed. Detectron2's other schedules (``LRMultiplier``) already
save only those.
"""

import logging
from typing import Any, Dict

import torch
from detectron2.config import CfgNode
from detectron2.projects.deeplab import build_lr_scheduler as build_deeplab_lr_scheduler
from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR as DeepLabWarmupPolyLR

__all__ = ["WarmupPolyLR", "build_lr_scheduler"]

logger = logging.getLogger(__name__)

# WarmupPolyLR attribute -> the config key it comes from
SHAPE_KEYS = {
    "max_iters": "SOLVER.MAX_ITER",
    "warmup_factor": "SOLVER.WARMUP_FACTOR",
    "warmup_iters": "SOLVER.WARMUP_ITERS",
    "warmup_method": "SOLVER.WARMUP_METHOD",
    "power": "SOLVER.POLY_LR_POWER",
    "constant_ending": "SOLVER.POLY_LR_CONSTANT_ENDING",
}


class WarmupPolyLR(DeepLabWarmupPolyLR):
    """Detectron2's DeepLab ``WarmupPolyLR`` whose schedule shape, when a checkpoint is loaded,
    stays the one it was built with (the config's); see the module docstring."""

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        changed = {
            attribute: (state_dict[attribute], getattr(self, attribute))
            for attribute in SHAPE_KEYS
            if attribute in state_dict and state_dict[attribute] != getattr(self, attribute)
        }
        configured_lrs = list(self.base_lrs)
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in SHAPE_KEYS})
        if changed:
            listed = ", ".join(
                f"{SHAPE_KEYS[name]} {before!r} -> {after!r}"
                for name, (before, after) in changed.items()
            )
            logger.warning(
                "The checkpoint's learning-rate schedule differs from the config's (%s): the "
                "schedule continues from iteration %d with the config's values.",
                listed,
                self.last_epoch,
            )
        if list(self.base_lrs) != configured_lrs:
            logger.warning(
                "The checkpoint's base learning rates (%s) differ from the config's (%s): "
                "training continues with the checkpoint's, as Detectron2 resumes (a changed "
                "SOLVER.BASE_LR or BACKBONE_MULTIPLIER takes effect in a new run, not with "
                "--resume).",
                _short(self.base_lrs),
                _short(configured_lrs),
            )


def _short(values) -> str:
    distinct = sorted(set(values))
    return ", ".join(f"{value:g}" for value in distinct)


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """``SOLVER.LR_SCHEDULER_NAME`` "WarmupPolyLR": :class:`WarmupPolyLR`; any other name:
    what Detectron2's DeepLab ``build_lr_scheduler`` builds (Detectron2's schedules)."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_deeplab_lr_scheduler(cfg, optimizer)
    return WarmupPolyLR(
        optimizer,
        cfg.SOLVER.MAX_ITER,
        warmup_factor=cfg.SOLVER.WARMUP_FACTOR,
        warmup_iters=cfg.SOLVER.WARMUP_ITERS,
        warmup_method=cfg.SOLVER.WARMUP_METHOD,
        power=cfg.SOLVER.POLY_LR_POWER,
        constant_ending=cfg.SOLVER.POLY_LR_CONSTANT_ENDING,
    )
