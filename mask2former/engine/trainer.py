"""``MaskFormerTrainer``: Detectron2's ``DefaultTrainer`` wired with the Mask2Former pieces."""

import contextlib
import functools
import logging
import os
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, HookBase, SimpleTrainer, hooks
from detectron2.engine import defaults as d2_defaults
from detectron2.utils import comm

from mask2former.data import bad_samples, build_dataset_mapper, check_num_classes, is_video_config

from .checkpoint import AtomicDetectionCheckpointer
from .ema import EMA_CHECKPOINT_KEY, ModelEMA, ModelEMAHook, build_model_ema
from .evaluation import build_evaluator, check_evaluation_dependencies
from .hooks import BadSampleHook, BestCheckpointHook, best_checkpoint_metric
from .interrupt import CheckpointOnInterrupt
from .lr_scheduler import build_lr_scheduler
from .optimizer import build_optimizer
from .train_loops import (
    CheckedAMPTrainer,
    CheckedSimpleTrainer,
    GradientAccumulation,
    NonFiniteLossCheck,
)
from .tta import SemanticSegmentorWithTTA

logger = logging.getLogger(__name__)

# SOLVER.AMP.PRECISION -> the autocast dtype.
AMP_PRECISIONS: Dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def amp_dtype(cfg: CfgNode, key: str) -> torch.dtype:
    """The autocast dtype that config ``key`` (``SOLVER.AMP.PRECISION`` or
    ``TEST.AMP.PRECISION``) names, or a ValueError naming the key and the choices."""
    name = cfg
    for part in key.split("."):
        name = name[part]
    if name not in AMP_PRECISIONS:
        raise ValueError(f"{key} is {name!r}; supported: {sorted(AMP_PRECISIONS)}.")
    return AMP_PRECISIONS[name]


class AutocastInference(torch.nn.Module):
    """A model whose forward runs under autocast: evaluation in mixed precision
    (``TEST.AMP``). Training mode and parameters are the wrapped model's."""

    def __init__(self, model: torch.nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, batched_inputs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(batched_inputs)


def evaluation_model(cfg: CfgNode, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` as evaluation runs it: under autocast when ``TEST.AMP.ENABLED`` (in
    ``TEST.AMP.PRECISION``; float16 on a CPU falls back to float32 with a warning), else as it
    is."""
    if not cfg.TEST.AMP.ENABLED:
        return model
    dtype = amp_dtype(cfg, "TEST.AMP.PRECISION")
    device_type = _model_device(model).type
    if device_type != "cuda" and dtype == torch.float16:
        logger.warning(
            "TEST.AMP.ENABLED with PRECISION float16 but the model is on the CPU: evaluating in "
            "float32 (set TEST.AMP.PRECISION bfloat16 for mixed precision on a CPU)."
        )
        return model
    logger.info("Evaluating under %s autocast (TEST.AMP).", cfg.TEST.AMP.PRECISION)
    return AutocastInference(model, device_type, dtype)


def accumulation_steps(cfg: CfgNode, world_size: Optional[int] = None) -> int:
    """``SOLVER.GRADIENT_ACCUMULATION_STEPS``, checked against ``SOLVER.IMS_PER_BATCH``.

    Args:
        cfg: the full config.
        world_size: training processes; default the current world size.

    Returns:
        the number of batches per optimizer step; each batch has ``IMS_PER_BATCH`` / (that x
        ``world_size``) images per process.

    Raises:
        ValueError: naming both keys, when the steps are not a positive integer or do not
            split ``IMS_PER_BATCH`` into whole batches on every process.
    """
    steps = cfg.SOLVER.GRADIENT_ACCUMULATION_STEPS
    if world_size is None:
        world_size = comm.get_world_size()
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"SOLVER.GRADIENT_ACCUMULATION_STEPS must be an integer >= 1 (1: no accumulation), "
            f"got {steps!r}."
        )
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % (steps * world_size) != 0:
        per_step = steps * world_size
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {total} cannot be split into "
            f"SOLVER.GRADIENT_ACCUMULATION_STEPS {steps} batches on each of {world_size} "
            f"process(es): it must be a multiple of {per_step} (steps x processes). "
            "IMS_PER_BATCH is the number of images per optimizer step over all processes; "
            "choose steps that divide IMS_PER_BATCH / processes."
        )
    return steps


@contextlib.contextmanager
def _ddp_for_cpu_processes(cfg: CfgNode) -> Iterator[None]:
    """Let ``DefaultTrainer.__init__`` wrap a CPU model for multi-process (gloo) training.

    It calls ``create_ddp_model(model, broadcast_buffers=False)``, which passes
    ``device_ids=[local rank]``: right for CUDA, refused by ``DistributedDataParallel`` for a
    CPU model. For a CPU model in a multi-process run, ``device_ids=None`` is passed instead
    while the trainer is built; otherwise nothing changes.
    """
    if comm.get_world_size() == 1 or torch.device(cfg.MODEL.DEVICE).type == "cuda":
        yield
        return
    create_ddp_model = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = functools.partial(create_ddp_model, device_ids=None)
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = create_ddp_model


def out_of_memory_message(cfg: CfgNode, world_size: int, error: BaseException) -> str:
    """What to change when a training step ran out of GPU memory: more accumulation steps (the
    same recipe in smaller batches) while a batch has more than one image per process, else
    smaller images or mixed precision."""
    steps = cfg.SOLVER.GRADIENT_ACCUMULATION_STEPS
    total = cfg.SOLVER.IMS_PER_BATCH
    images = total // (steps * world_size)
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    summary = (
        f"Out of memory in a training step ({first_line}). Each process trains on batches of "
        f"{images} image(s) (SOLVER.IMS_PER_BATCH {total} over {world_size} process(es) and "
        f"SOLVER.GRADIENT_ACCUMULATION_STEPS {steps})."
    )
    more_steps = next(
        (k for k in range(steps + 1, total // world_size + 1) if total % (k * world_size) == 0),
        None,
    )
    if more_steps is not None:
        advice = (
            f" Set SOLVER.GRADIENT_ACCUMULATION_STEPS {more_steps} for batches of "
            f"{total // (more_steps * world_size)} image(s): the same recipe (images per "
            "step, learning rate, schedule) in less memory."
        )
    else:
        advice = (
            " A batch already has one image per process: train on smaller images "
            "(INPUT.IMAGE_SIZE in the LSJ configs, INPUT.MIN_SIZE_TRAIN / INPUT.CROP.SIZE in "
            "the others) or use a GPU with more memory."
        )
    if not cfg.SOLVER.AMP.ENABLED:
        advice += " Mixed precision (SOLVER.AMP.ENABLED True) also needs less memory."
    return summary + advice


def _warn_batch_norm_with_accumulation(cfg: CfgNode, model: torch.nn.Module) -> None:
    """A warning when gradient accumulation trains batch-norm layers, whose statistics are
    those of each accumulated batch, not of the whole optimizer step."""
    steps = accumulation_steps(cfg)
    if steps == 1:
        return
    layers = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training
    ]
    if not layers:
        return
    images = cfg.SOLVER.IMS_PER_BATCH // (steps * comm.get_world_size())
    logger.warning(
        "SOLVER.GRADIENT_ACCUMULATION_STEPS is %d and the model has %d batch-norm layers that "
        "train (%s, ...; e.g. MODEL.RESNETS.NORM 'BN' or 'SyncBN'): they normalise with the "
        "statistics of each batch of %d image(s) per process, not of the %d images of a step, "
        "so training will differ from training on larger batches ('FrozenBN', as in the "
        "official ResNet configs but Cityscapes', avoids this).",
        steps,
        len(layers),
        layers[0],
        images,
        cfg.SOLVER.IMS_PER_BATCH,
    )


class CPUAutocastTrainer(GradientAccumulation, NonFiniteLossCheck, SimpleTrainer):
    """``SimpleTrainer`` whose model forward runs under CPU autocast (bfloat16, no loss scaling).

    Detectron2's ``AMPTrainer`` is CUDA-only; bfloat16 has float32's range, so on a CPU the
    forward can run in it without a gradient scaler. Only the forward differs from
    ``SimpleTrainer.run_step``, which is reused as it is (``zero_grad_before_forward``, async
    metrics, ...): for the length of a step, hooks on the model enter autocast when its forward
    starts and leave it when the forward returns or raises, so the backward pass and the
    optimizer step run outside autocast, on the float32 parameters.
    """

    def __init__(
        self, model, data_loader, optimizer, *, precision: torch.dtype = torch.bfloat16, **kwargs
    ):
        """
        Args:
            model, data_loader, optimizer, kwargs: as for ``SimpleTrainer`` (and
                ``NonFiniteLossCheck``'s ``checkpoint_dir``, ``GradientAccumulation``'s
                ``accumulation_steps``).
            precision: the autocast dtype.
        """
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.precision = precision

    def run_step(self) -> None:
        autocast = torch.autocast("cpu", dtype=self.precision)

        def enter_autocast(module, args) -> None:
            autocast.__enter__()

        def leave_autocast(module, args, output) -> None:
            autocast.__exit__(None, None, None)

        handles = (
            self.model.register_forward_pre_hook(enter_autocast),
            self.model.register_forward_hook(leave_autocast, always_call=True),
        )
        try:
            super().run_step()
        finally:
            for handle in handles:
                handle.remove()


def build_train_loop(
    cfg: CfgNode, model: torch.nn.Module, data_loader, optimizer: torch.optim.Optimizer
) -> SimpleTrainer:
    """The inner training loop: float32, or mixed precision when ``SOLVER.AMP.ENABLED``.

    The autocast dtype is ``SOLVER.AMP.PRECISION``: "float16" (with loss scaling) or
    "bfloat16" (without). On CUDA this is Detectron2's ``AMPTrainer``; on a CPU bfloat16 runs
    in :class:`CPUAutocastTrainer`, and float16 (which CPUs do not speed up and which would
    need loss scaling) falls back to float32 with a warning, so the official configs, which
    enable AMP, run unchanged. Every loop stops on a non-finite loss (see ``train_loops``) and
    accumulates the gradients of ``SOLVER.GRADIENT_ACCUMULATION_STEPS`` batches per step.
    """
    checks = {"checkpoint_dir": cfg.OUTPUT_DIR, "accumulation_steps": accumulation_steps(cfg)}
    if not cfg.SOLVER.AMP.ENABLED:
        return CheckedSimpleTrainer(model, data_loader, optimizer, **checks)
    precision = amp_dtype(cfg, "SOLVER.AMP.PRECISION")
    if _model_device(model).type != "cuda":
        if precision == torch.bfloat16:
            return CPUAutocastTrainer(model, data_loader, optimizer, precision=precision, **checks)
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
    ``INPUT.DATASET_MAPPER_NAME`` (for a video model the video mapper, in evaluation too); the
    optimizer comes from :func:`build_optimizer` (AdamW or SGD, backbone LR multiplier, no
    weight decay on norms and embeddings, full-model gradient clipping); the LR schedule may be
    "WarmupPolyLR"; evaluators follow the data set's ``evaluator_type``; checkpoints are
    written atomically; AMP uses ``SOLVER.AMP.PRECISION``; multi-process training also works on
    CPUs (gloo); semantic test-time augmentation runs after training when ``TEST.AUG.ENABLED``;
    bad samples are replaced (training) or left out (evaluation) and reported; a non-finite
    loss stops training with a message that names the last good checkpoint; an iteration may
    accumulate the gradients of several batches (``SOLVER.GRADIENT_ACCUMULATION_STEPS``);
    evaluation may run in mixed precision (``TEST.AMP``); a moving average of the weights may
    be kept, checkpointed and evaluated (``MODEL_EMA``).
    """

    def __init__(self, cfg: CfgNode):
        self.ema: Optional[ModelEMA] = None  # MODEL_EMA's average; build_hooks builds it
        # an evaluator that cannot run fails now, not after training (an uninstalled package),
        # and so does a model whose classes are not the data sets'
        check_evaluation_dependencies(cfg)
        check_num_classes(cfg)
        # a setting it cannot work with fails now; build_hooks (in DefaultTrainer.__init__) uses it
        best = cfg.SOLVER.BEST_CHECKPOINTER
        self._best_metric = best_checkpoint_metric(cfg) if best.ENABLED else None
        with _ddp_for_cpu_processes(cfg), warnings.catch_warnings():
            # With SOLVER.AMP.ENABLED, DefaultTrainer builds an AMPTrainer whose
            # torch.cuda.amp.GradScaler warns (deprecated; no CUDA on a CPU machine); that
            # inner loop is replaced just below by build_train_loop's, so its warnings only
            # mislead.
            warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.GradScaler")
            super().__init__(cfg)
        # What DefaultTrainer.__init__ hard-codes and Mask2Former changes: the inner loop
        # (SOLVER.AMP.PRECISION, CPU autocast) and the checkpointer (atomic files).
        self._trainer = build_train_loop(self.cfg, self.model, self.data_loader, self.optimizer)
        _warn_batch_norm_with_accumulation(self.cfg, self.model)
        # the moving average (built by build_hooks) is saved and resumed with the checkpoints
        average = {EMA_CHECKPOINT_KEY: self.ema} if self.ema is not None else {}
        self.checkpointer = AtomicDetectionCheckpointer(
            self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self), **average
        )
        for hook in self._hooks:
            if isinstance(hook, hooks.PeriodicCheckpointer):
                hook.checkpointer = self.checkpointer

    def run_step(self) -> None:
        """Detectron2's step; running out of GPU memory raises ``torch.OutOfMemoryError``
        with what to change (:func:`out_of_memory_message`), the original error chained."""
        try:
            super().run_step()
        except torch.OutOfMemoryError as error:
            message = out_of_memory_message(self.cfg, comm.get_world_size(), error)
            raise torch.OutOfMemoryError(message) from error

    def build_hooks(self):
        """Detectron2's default hooks, plus the bad-sample count, when ``TEST.AUG.ENABLED`` a
        final TTA evaluation, when ``SOLVER.BEST_CHECKPOINTER.ENABLED`` the best checkpoint
        after the evaluations, and last a checkpoint when SIGTERM or Ctrl-C stops training
        (:mod:`mask2former.engine.interrupt`). With ``MODEL_EMA.ENABLED`` the moving average
        of the weights is updated after each step, before the checkpoint and the evaluation,
        and the evaluations evaluate it (:meth:`evaluate_average`)."""
        self.ema = build_model_ema(self.cfg, self.model) if self.cfg.MODEL_EMA.ENABLED else None
        default_hooks = super().build_hooks()
        if self.ema is not None:
            default_hooks = self._with_moving_average(default_hooks)
        extra_hooks = [BadSampleHook()]
        if self.cfg.TEST.AUG.ENABLED:
            extra_hooks.append(
                hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, self.inference_model))
            )
        if self._best_metric is not None:
            mode = self.cfg.SOLVER.BEST_CHECKPOINTER.MODE
            extra_hooks.append(
                BestCheckpointHook(self.cfg.TEST.EVAL_PERIOD, self._best_metric, mode)
            )
        # before the writers, so that what these hooks put in the storage gets written too
        writer_index = next(
            (i for i, hook in enumerate(default_hooks) if isinstance(hook, hooks.PeriodicWriter)),
            len(default_hooks),
        )
        return [
            *default_hooks[:writer_index],
            *extra_hooks,
            *default_hooks[writer_index:],
            # last: it may end training after the others have saved, evaluated and written
            CheckpointOnInterrupt(),
        ]

    def _with_moving_average(self, default_hooks: List[HookBase]) -> List[HookBase]:
        """Detectron2's hooks with the average's update after the LR scheduler (so before the
        checkpointer and the evaluation) and its evaluation instead of the model's."""
        ordered = []
        for hook in default_hooks:
            if isinstance(hook, hooks.EvalHook):
                hook = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self.evaluate_average)
            ordered.append(hook)
            if isinstance(hook, hooks.LRScheduler):
                ordered.append(ModelEMAHook(self.ema))
        return ordered

    def save_safetensors(self, name: str = "model_final") -> Optional[str]:
        """Save the weights for inference as ``OUTPUT_DIR/{name}.safetensors``: the moving
        average with ``MODEL_EMA.ENABLED`` and ``USE_FOR_INFERENCE``, else the model's.

        Returns:
            The path written; None on processes other than the main one.
        """
        weights = None
        if self.ema is not None and self.cfg.MODEL_EMA.USE_FOR_INFERENCE:
            weights = self.ema.model.state_dict()
        return self.checkpointer.save_safetensors(name, weights)

    @property
    def inference_model(self) -> torch.nn.Module:
        """What evaluation during training evaluates: the moving average with
        ``MODEL_EMA.ENABLED``, else the model."""
        return self.model if self.ema is None else self.ema.model

    def evaluate_average(self) -> Dict[str, Any]:
        """Evaluate the moving average of the weights and, with ``MODEL_EMA.EVAL_RAW_WEIGHTS``,
        the raw weights too, whose results go under "raw" (flattened: "raw/sem_seg/mIoU")."""
        results = self.test(self.cfg, self.ema.model)
        if self.cfg.MODEL_EMA.EVAL_RAW_WEIGHTS:
            results = OrderedDict(results)
            results["raw"] = self.test(self.cfg, self.model)
        # what DefaultTrainer.train returns and checks against TEST.EXPECTED_RESULTS
        self._last_eval_results = results
        return results

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """The mapper named by ``INPUT.DATASET_MAPPER_NAME`` in a loader that replaces and
        reports bad samples (:mod:`mask2former.data.bad_samples`); with gradient accumulation
        its batches are ``SOLVER.IMS_PER_BATCH`` / ``SOLVER.GRADIENT_ACCUMULATION_STEPS``
        images over all processes."""
        steps = accumulation_steps(cfg)
        if steps > 1:
            world_size = comm.get_world_size()
            logger.info(
                "Gradient accumulation: each optimizer step sums the gradients of %d batches of "
                "%d image(s) on each of %d process(es), %d images per step "
                "(SOLVER.IMS_PER_BATCH); the losses are normalised as on %d processes.",
                steps,
                cfg.SOLVER.IMS_PER_BATCH // (steps * world_size),
                world_size,
                cfg.SOLVER.IMS_PER_BATCH,
                steps * world_size,
            )
        return bad_samples.build_train_loader(
            cfg,
            build_dataset_mapper(cfg, is_train=True),
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH // steps,
        )

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """Detectron2's inference loader, leaving out and reporting bad images; for a video
        model, one whole video per sample (the video mapper in inference mode)."""
        mapper = build_dataset_mapper(cfg, is_train=False) if is_video_config(cfg) else None
        return bad_samples.build_test_loader(cfg, dataset_name, mapper)

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None):
        """Detectron2's evaluation on ``DATASETS.TEST``, under autocast when ``TEST.AMP.ENABLED``
        (:func:`evaluation_model`)."""
        return super().test(cfg, evaluation_model(cfg, model), evaluators)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        """The config's schedule, which ``--resume`` continues with the config's shape
        (:mod:`mask2former.engine.lr_scheduler`)."""
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
