"""An exponential moving average (EMA) of the weights during training (``MODEL_EMA``).

Not in the official release. After every optimizer step the average moves towards the
weights: ``average = decay * average + (1 - decay) * weights``, with ``decay = DECAY * (1 -
exp(-steps / WARMUP_ITERS))`` so that the first steps, when the weights still change fast, do
not stay in the average for long. The average lives in a copy of the model, which evaluation
uses directly.

- Checkpoints hold it under "ema" (``{"model": state dict, "updates": steps}``) beside the
  raw weights under "model"; ``--resume`` continues it.
- Inference of such a checkpoint (``--eval-only``, the demo, ``Predictor``, export) uses the
  average when ``MODEL_EMA.USE_FOR_INFERENCE`` (the default): see
  :class:`~mask2former.engine.checkpoint.AtomicDetectionCheckpointer`.
"""

import copy
import logging
import math
from typing import Any, Dict

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase
from torch.nn.parallel import DistributedDataParallel

from ..utils.weights_io import EMA_CHECKPOINT_KEY  # where checkpoints keep the average

__all__ = [
    "EMA_CHECKPOINT_KEY",
    "ModelEMA",
    "ModelEMAHook",
    "build_model_ema",
    "check_model_ema_config",
]

logger = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _check_settings(decay: float, warmup_iters: int, device: str) -> None:
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"MODEL_EMA.DECAY is {decay}: it must lie in [0, 1).")
    if warmup_iters < 0:
        raise ValueError(f"MODEL_EMA.WARMUP_ITERS is {warmup_iters}: it must be >= 0.")
    if device:
        try:
            torch.device(device)
        except RuntimeError as error:
            raise ValueError(
                f"MODEL_EMA.DEVICE is {device!r}, not a device: use '' (the model's), 'cpu' "
                "or 'cuda'."
            ) from error


def check_model_ema_config(cfg: CfgNode) -> None:
    """Raise ValueError naming the key when ``MODEL_EMA`` is on with a setting it cannot
    work with (before any process starts: train_net.py)."""
    if cfg.MODEL_EMA.ENABLED:
        ema = cfg.MODEL_EMA
        _check_settings(ema.DECAY, ema.WARMUP_ITERS, ema.DEVICE)


class ModelEMA:
    """The average of a model's weights, kept in a copy of the model (``self.model``, in eval
    mode, without gradients). Its ``state_dict`` is what checkpoints store under "ema"."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        decay: float,
        warmup_iters: int = 0,
        device: str = "",
    ):
        """
        Args:
            model: the model trained (a DistributedDataParallel wrapper is looked through).
            decay: the weight of the average at each step, in [0, 1).
            warmup_iters: the decay ramps up as ``decay * (1 - exp(-steps / warmup_iters))``;
                0 applies ``decay`` from the first step.
            device: where the average lives; "" the model's device.
        """
        _check_settings(decay, warmup_iters, device)
        self.decay = decay
        self.warmup_iters = warmup_iters
        self.updates = 0
        self.model = copy.deepcopy(_unwrap(model)).eval().requires_grad_(False)
        if device:
            self.model.to(device)

    def decay_at(self, updates: int) -> float:
        """The decay of the ``updates``-th step (counted from 1)."""
        if self.warmup_iters == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-updates / self.warmup_iters))

    def _pairs(self, model: torch.nn.Module):
        mine = self.model.state_dict()
        theirs = _unwrap(model).state_dict()
        if mine.keys() != theirs.keys():
            raise ValueError(
                "The model's weights no longer match its moving average (MODEL_EMA): "
                f"{sorted(mine.keys() ^ theirs.keys())[:5]} differ."
            )
        return [(mine[name], theirs[name]) for name in mine]

    @torch.no_grad()
    def reset(self, model: torch.nn.Module) -> None:
        """Start the average again from ``model``'s weights."""
        for average, value in self._pairs(model):
            average.copy_(value)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average one step towards ``model``'s weights. Floating-point weights and
        buffers are averaged; integer buffers (counters) are copied."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        averages, values = [], []
        for average, value in self._pairs(model):
            if average.is_floating_point():
                averages.append(average)
                values.append(value.to(average.device, average.dtype))
            else:
                average.copy_(value)
        if averages:
            # average + weight * (value - average) = (1 - weight) * average + weight * value
            torch._foreach_lerp_(averages, values, weight)

    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


class ModelEMAHook(HookBase):
    """Updates the average after every training iteration (one optimizer step, also with
    gradient accumulation). Before training it starts the average from the model's weights,
    unless ``--resume`` loaded an average from the checkpoint."""

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def before_train(self) -> None:
        if self.ema.updates > 0:
            logger.info(
                "Continuing the moving average of the weights (%d steps).", self.ema.updates
            )
            return
        if self.trainer.start_iter > 0:
            logger.warning(
                "MODEL_EMA: the checkpoint resumed from holds no moving average of the weights; "
                "it starts now, at iteration %d, from the loaded weights.",
                self.trainer.start_iter,
            )
        self.ema.reset(self.trainer.model)

    def after_step(self) -> None:
        self.ema.update(self.trainer.model)


def build_model_ema(cfg: CfgNode, model: torch.nn.Module) -> ModelEMA:
    """The average that ``MODEL_EMA`` describes, of ``model``."""
    return ModelEMA(
        model,
        decay=cfg.MODEL_EMA.DECAY,
        warmup_iters=cfg.MODEL_EMA.WARMUP_ITERS,
        device=cfg.MODEL_EMA.DEVICE,
    )
