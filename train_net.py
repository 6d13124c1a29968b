#!/usr/bin/env python
"""Train or evaluate Mask2Former with Detectron2.

Examples::

    # train on the synthetic shapes data set (CPU, minutes)
    python train_net.py --config-file configs/shapes/maskformer2_R18_panoptic.yaml
    # evaluate a checkpoint
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth
    # continue an interrupted run from OUTPUT_DIR/last_checkpoint (Ctrl-C and SIGTERM stop
    # training with a checkpoint of the iteration reached: mask2former/engine/interrupt.py)
    python train_net.py --config-file CONFIG --resume
    # 8 GPUs (or 8 gloo processes on a CPU-only machine)
    python train_net.py --config-file CONFIG --num-gpus 8
"""

import logging
import os
import signal
import sys
from contextlib import nullcontext

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException

from mask2former import modeling as _modeling  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.data import check_num_classes, is_video_config
from mask2former.data.bad_samples import TooManyBadSamplesError
from mask2former.engine import (
    AtomicDetectionCheckpointer,
    EvaluationDependencyError,
    MaskFormerTrainer,
    accumulation_steps,
    check_evaluation_dependencies,
)
from mask2former.engine.ema import check_model_ema_config
from mask2former.engine.hooks import best_checkpoint_metric
from mask2former.engine.interrupt import TrainingInterrupted, forward_stop_signals_to_children
from mask2former.engine.run_config import keep_earlier_config
from mask2former.engine.train_loops import NonFiniteLossError
from mask2former.modeling.meta_arch.mask_former import sliding_window_from_config
from mask2former.utils.cpu_memory import keep_freed_memory
from mask2former.utils.device import runnable_device
from mask2former.utils.signals import STOP_SIGNALS
from mask2former.utils.weights_io import WeightsFileError


def setup(args) -> CfgNode:
    """Load the config (file + overrides), pick the device and set up logging and OUTPUT_DIR."""
    cfg = load_config(args.config_file, args.opts)
    # first, so that the log file gets the warnings of what follows
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mask2former")
    # the official configs assume GPUs; on a CPU-only machine run there (gloo for N > 1)
    cfg.MODEL.DEVICE = str(runnable_device(cfg.MODEL.DEVICE))
    cfg.freeze()
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        # default_setup replaces OUTPUT_DIR/config.yaml: an earlier run's is kept if it differs
        keep_earlier_config(cfg.OUTPUT_DIR, cfg, resume=args.resume)
    default_setup(cfg, args)
    if cfg.MODEL.DEVICE == "cpu":
        keep_freed_memory()  # faster CPU inference (mask2former/utils/cpu_memory.py)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = MaskFormerTrainer.build_model(cfg)
        AtomicDetectionCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, use_average=cfg.MODEL_EMA.USE_FOR_INFERENCE
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = MaskFormerTrainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(MaskFormerTrainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = MaskFormerTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    try:
        results = trainer.train()
    # SIGTERM or Ctrl-C: a checkpoint was written (mask2former/engine/interrupt.py)
    except TrainingInterrupted as stop:
        logging.getLogger("mask2former").warning("%s", stop)
        sys.exit(stop.exit_status)
    if cfg.SOLVER.SAVE_SAFETENSORS:
        trainer.save_safetensors("model_final")
    return results


def check_args(args) -> None:
    """Fail before starting any process when the config or the weights to evaluate are wrong,
    or when the test data sets cannot be evaluated (e.g. an evaluator's package is missing),
    or MODEL.SEM_SEG_HEAD.NUM_CLASSES is not the number of classes of the data sets used,
    or SOLVER.BEST_CHECKPOINTER, SOLVER.GRADIENT_ACCUMULATION_STEPS (for the number of
    processes asked for), MODEL_EMA or MODEL.MASK_FORMER.TEST.SLIDING_WINDOW cannot work."""
    cfg = load_config(args.config_file, args.opts)
    check_evaluation_dependencies(cfg)
    # MODEL.SEM_SEG_HEAD.NUM_CLASSES against the data sets' classes: a model with more would
    # train, then fail in the evaluator
    check_num_classes(cfg, cfg.DATASETS.TEST if args.eval_only else None, load=True)
    if not is_video_config(cfg):  # a video model names the key itself when it is built
        sliding_window_from_config(cfg)
    if not args.eval_only:
        accumulation_steps(cfg, world_size=args.num_gpus * args.num_machines)
    if cfg.SOLVER.BEST_CHECKPOINTER.ENABLED and not args.eval_only:
        best_checkpoint_metric(cfg)
    if not args.eval_only:
        check_model_ema_config(cfg)
    weights = cfg.MODEL.WEIGHTS
    if args.eval_only and not args.resume and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"--eval-only needs trained weights, but MODEL.WEIGHTS {weights!r} is not a file. "
            "Pass MODEL.WEIGHTS path/to/model_final.pth (or .pkl) after the options."
        )


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:
        check_args(args)
    except (
        FileNotFoundError,
        KeyError,
        ValueError,
        NotImplementedError,
        EvaluationDependencyError,
    ) as error:
        sys.exit(f"error: {error}")
    print("Command Line Args:", args)
    # with training processes to start, this one passes SIGTERM / Ctrl-C on to them
    spawns = args.num_gpus * args.num_machines > 1
    forwarding = forward_stop_signals_to_children() if spawns else nullcontext()
    try:
        with forwarding:
            launch(
                main,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
            )
    # MODEL.WEIGHTS or the checkpoint to resume from; too many bad samples; a non-finite loss
    except (WeightsFileError, TooManyBadSamplesError, NonFiniteLossError) as error:
        sys.exit(f"error: {error}")
    # a training process stopped on a signal, after its checkpoint (it logged which)
    except ProcessExitedException as error:
        if error.exit_code is None or error.exit_code - 128 not in STOP_SIGNALS:
            raise
        name = signal.Signals(error.exit_code - 128).name
        print(
            f"Training stopped by {name}; the log names the checkpoint written. Run the same "
            "command with --resume to continue.",
            file=sys.stderr,
        )
        sys.exit(error.exit_code)
