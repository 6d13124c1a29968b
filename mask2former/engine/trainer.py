"""``MaskFormerTrainer``: Detectron2's ``DefaultTrainer`` wired with the Mask2Former pieces."""

import logging
import os
import time
import weakref
from collections import OrderedDict
from typing import Any, Dict

import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from mask2former.data import bad_samples, build_dataset_mapper

from .checkpoint import AtomicDetectionCheckpointer
from .evaluation import build_evaluator
from .hooks import BadSampleHook
from .optimizer import build_optimizer
from .train_loops import CheckedAMPTrainer, CheckedSimpleTrainer, NonFiniteLossCheck
from .tta import SemanticSegmentorWithTTA

logger = logging.getLogger(__name__)

# SOLVER.AMP.PRECISION -> the autocast dtype.
AMP_PRECISIONS: Dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class CPUAutocastTrainer(NonFiniteLossCheck, SimpleTrainer):
    """``SimpleTrainer`` whose forward pass runs under CPU autocast (bfloat16, no loss scaling).

    Detectron2's ``AMPTrainer`` is CUDA-only; bfloat16 has float32's range, so on a CPU the
    forward can run in it without a gradient scaler. Backward and the optimizer step run
    outside autocast, on the float32 parameters.
    """

    def __init__(
        self, model, data_loader, optimizer, precision: torch.dtype = torch.bfloat16, **kwargs
    ):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.precision = precision

    def run_step(self) -> None:
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=self.precision):
            loss_dict = self.model(data)
            losses = loss_dict if isinstance(loss_dict, torch.Tensor) else sum(loss_dict.values())
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def build_train_loop(
    cfg: CfgNode, model: torch.nn.Module, data_loader, optimizer: torch.optim.Optimizer
) -> SimpleTrainer:
    """The inner training loop: float32, or mixed precision when ``SOLVER.AMP.ENABLED``.

    The autocast dtype is ``SOLVER.AMP.PRECISION``: "float16" (with loss scaling) or
    "bfloat16" (without). On CUDA this is Detectron2's ``AMPTrainer``; on a CPU bfloat16 runs
    in :class:`CPUAutocastTrainer`, and float16 (which CPUs do not speed up and which would
    need loss scaling) falls back to float32 with a warning, so the official configs, which
    enable AMP, run unchanged. Every loop stops on a non-finite loss (see ``train_loops``).
    """
    checks = {"checkpoint_dir": cfg.OUTPUT_DIR}
    if not cfg.SOLVER.AMP.ENABLED:
        return CheckedSimpleTrainer(model, data_loader, optimizer, **checks)
    precision_name = cfg.SOLVER.AMP.PRECISION
    if precision_name not in AMP_PRECISIONS:
        raise ValueError(
            f"SOLVER.AMP.PRECISION is {precision_name!r}; supported: {sorted(AMP_PRECISIONS)}."
        )
    precision = AMP_PRECISIONS[precision_name]
    if _model_device(model).type != "cuda":
        if precision == torch.bfloat16:
            return CPUAutocastTrainer(model, data_loader, optimizer, precision, **checks)
        logger.warning(
            "SOLVER.AMP.ENABLED with PRECISION float16 but the model is on the CPU: training in "
            "float32 (set SOLVER.AMP.PRECISION bfloat16 for mixed precision on a CPU)."
        )
        return CheckedSimpleTrainer(model, data_loader, optimizer, **checks)
    grad_scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
    return CheckedAMPTrainer(
        model, data_loader, optimizer, grad_scaler=grad_scaler, precision=precision, **checks
    )


class MaskFormerTrainer(DefaultTrainer):
    """``DefaultTrainer`` with Mask2Former's data mappers, optimizer, schedule and evaluators.

    Differences from ``DefaultTrainer``: the train loader uses the mapper named by
    ``INPUT.DATASET_MAPPER_NAME``; the optimizer comes from :func:`build_optimizer` (AdamW or
    SGD, backbone LR multiplier, no weight decay on norms and embeddings, full-model gradient
    clipping); the LR schedule may be "WarmupPolyLR"; evaluators follow the data set's
    ``evaluator_type``; checkpoints are written atomically; AMP uses ``SOLVER.AMP.PRECISION``;
    multi-process training also works on CPUs (gloo); semantic test-time augmentation runs after
    training when ``TEST.AUG.ENABLED``; bad samples are replaced (training) or left out
    (evaluation) and reported; a non-finite loss stops training with a message that names the
    last good checkpoint.
    """

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        # DistributedDataParallel takes device_ids only for CUDA modules; gloo on CPU needs None
        device_ids = [comm.get_local_rank()] if _model_device(model).type == "cuda" else None
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)
        self._trainer = build_train_loop(cfg, model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicDetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """Detectron2's default hooks, plus the bad-sample count and, when
        ``TEST.AUG.ENABLED``, a final TTA evaluation."""
        default_hooks = super().build_hooks()
        extra_hooks = [BadSampleHook()]
        if self.cfg.TEST.AUG.ENABLED:
            extra_hooks.append(hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, self.model)))
        # before the writers, so that what these hooks put in the storage gets written too
        writer_index = next(
            (i for i, hook in enumerate(default_hooks) if isinstance(hook, hooks.PeriodicWriter)),
            len(default_hooks),
        )
        return default_hooks[:writer_index] + extra_hooks + default_hooks[writer_index:]

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """The mapper named by ``INPUT.DATASET_MAPPER_NAME`` in a loader that replaces and
        reports bad samples (:mod:`mask2former.data.bad_samples`)."""
        return bad_samples.build_train_loader(cfg, build_dataset_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """Detectron2's inference loader, leaving out and reporting bad images."""
        return bad_samples.build_test_loader(cfg, dataset_name)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str = None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: torch.nn.Module) -> Dict[str, Any]:
        """Evaluate ``model`` on ``DATASETS.TEST`` with semantic test-time augmentation.

        Returns:
            The evaluation results, each data set's key suffixed with "_TTA".
        """
        logger.info("Running inference with test-time augmentation ...")
        model = SemanticSegmentorWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
            )
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, model, evaluators)
        return OrderedDict((name + "_TTA", value) for name, value in results.items())
