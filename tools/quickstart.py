#!/usr/bin/env python
"""The whole project in one command (``make quickstart``), on a CPU, in about ten minutes.

1. generates the synthetic "shapes" data set (skipped when it is there);
2. trains the small panoptic config (configs/shapes/maskformer2_R18_panoptic.yaml) with a
   progress bar and ETA, within a time budget (``--train-minutes``, default 8; skipped when
   OUTPUT/model_final.pth exists), and saves the weights also as model_final.safetensors;
3. evaluates it with the real evaluators (panoptic PQ, instance AP, semantic mIoU) and prints
   a table (skipped when OUTPUT/evaluation_metrics.json exists and no training ran);
4. runs the demo on a few validation images (skipped when their pictures exist);
5. prints where the weights, the metrics and the pictures are.

A second run reuses what is done, and continues a training that Ctrl-C stopped (from the
checkpoint it left, see mask2former/engine/interrupt.py); ``--force`` redoes training,
evaluation and demo.
Everything goes under ``output/quickstart`` (``--output``); the full log is in ``log.txt``.
"""
# ruff: noqa: E402

import argparse
import json
import logging
import os
import signal
import sys
import time
import warnings
from contextlib import redirect_stdout

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
# (Set before detectron2 is imported, hence the imports below this line.)
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from detectron2.config import CfgNode
from detectron2.engine import hooks
from detectron2.utils.env import seed_all_rng

import mask2former  # noqa: F401  registers the model and the data sets
from mask2former.apps.cli import run_images
from mask2former.config import UnknownConfigKeyError, add_opts_argument, load_config
from mask2former.data import ensure_synthetic_dataset
from mask2former.data.datasets.catalog_utils import get_datasets_root
from mask2former.data.synthetic import synthetic_split_paths
from mask2former.engine import AtomicDetectionCheckpointer, MaskFormerTrainer
from mask2former.engine.hooks import BestCheckpointHook
from mask2former.engine.interrupt import TrainingInterrupted
from mask2former.predictor import Predictor
from mask2former.utils.atomic_io import atomic_open
from mask2former.utils.cpu_memory import keep_freed_memory
from mask2former.utils.progress import TqdmProgressHook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "shapes", "maskformer2_R18_panoptic.yaml")
DEFAULT_OUTPUT = os.path.join("output", "quickstart")
LOGGERS = ("detectron2", "mask2former", "fvcore", "d2")
# (result group, metric, task shown, metric shown) rows of the summary table.
TABLE_ROWS = (
    ("panoptic_seg", "PQ", "panoptic", "PQ"),
    ("panoptic_seg", "PQ_th", "panoptic", "PQ things"),
    ("panoptic_seg", "PQ_st", "panoptic", "PQ stuff"),
    ("segm", "AP", "instance", "mask AP"),
    ("segm", "AP50", "instance", "mask AP50"),
    ("sem_seg", "mIoU", "semantic", "mIoU"),
    ("sem_seg", "pACC", "semantic", "pixel accuracy"),
)
# detectron2's trainer writes its training curves to OUTPUT_DIR/metrics.json.
EVALUATION_FILE = "evaluation_metrics.json"


class _QuickstartTrainer(MaskFormerTrainer):
    """The project's trainer with a progress bar and a time budget; evaluation is separate.

    When the budget is spent, the remaining iterations do nothing, so the schedule's hooks
    (checkpoint of model_final.pth included) still run at the end as usual.
    """

    def __init__(self, cfg: CfgNode, *, time_budget_s: float):
        self._time_budget_s = time_budget_s
        self._deadline = float("inf")
        self.stopped_at = None
        super().__init__(cfg)

    def build_hooks(self):
        # evaluation is a step of its own here, and the best checkpoint needs evaluations
        evaluating = (hooks.EvalHook, BestCheckpointHook)
        kept = [hook for hook in super().build_hooks() if not isinstance(hook, evaluating)]
        return kept + [TqdmProgressHook(refresh_every=5)]

    def train(self):
        if self._time_budget_s > 0:
            self._deadline = time.perf_counter() + self._time_budget_s
        return super().train()

    def run_step(self):
        if self.stopped_at is None and time.perf_counter() > self._deadline:
            self.stopped_at = self.iter
        if self.stopped_at is None:
            super().run_step()


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="config to train")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="where everything goes")
    parser.add_argument("--force", action="store_true", help="redo training, evaluation, demo")
    parser.add_argument("--max-iter", type=int, help="training iterations (default: config's)")
    parser.add_argument(
        "--train-minutes",
        type=float,
        default=8.0,
        help="time budget of the training; later iterations are skipped (0: no limit)",
    )
    parser.add_argument("--num-demo-images", type=int, default=4, help="validation images to draw")
    add_opts_argument(parser)
    return parser.parse_args(argv)


def _setup_logging(output: str) -> None:
    """Everything into OUTPUT/log.txt; warnings also on the console."""
    os.makedirs(output, exist_ok=True)
    log_file = logging.FileHandler(os.path.join(output, "log.txt"))
    log_file.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.handlers = [log_file, console]


def _config(args) -> CfgNode:
    opts = ["OUTPUT_DIR", args.output, "MODEL.DEVICE", "cpu", "SOLVER.SAVE_SAFETENSORS", "True"]
    opts += list(args.opts)
    if args.max_iter is not None:
        opts += ["SOLVER.MAX_ITER", str(args.max_iter)]
    cfg = load_config(args.config_file, opts)
    if cfg.SEED < 0:
        cfg.SEED = 0
    cfg.freeze()
    return cfg


def _shapes_root() -> str:
    """Where the registered shapes data sets look (relative to the working directory)."""
    return os.path.abspath(os.path.join(get_datasets_root(), "shapes"))


def _step(number: int, text: str) -> None:
    print(f"\n[{number}/4] {text}", flush=True)


def _train(cfg: CfgNode, weights: str, time_budget_s: float) -> None:
    seed_all_rng(cfg.SEED)
    trainer = _QuickstartTrainer(cfg, time_budget_s=time_budget_s)
    # a run stopped by Ctrl-C left last_checkpoint (mask2former/engine/interrupt.py); --force
    # removes it
    trainer.resume_or_load(resume=True)
    if trainer.start_iter > 0:
        print(f"Continuing from iteration {trainer.start_iter} (--force starts again).")
    started = time.perf_counter()
    trainer.train()
    # the trainer's last hook saves model_final.pth
    if not os.path.isfile(weights):
        trainer.checkpointer.save("model_final")
    if cfg.SOLVER.SAVE_SAFETENSORS:
        trainer.save_safetensors("model_final")
    done = cfg.SOLVER.MAX_ITER if trainer.stopped_at is None else trainer.stopped_at
    print(f"Trained {done} iterations in {time.perf_counter() - started:.0f} s.")
    if trainer.stopped_at is not None:
        print(
            f"Stopped at the {time_budget_s / 60:g}-minute budget after {done} of "
            f"{cfg.SOLVER.MAX_ITER} iterations (--train-minutes 0 trains them all; "
            "--max-iter sets fewer)."
        )


def _evaluate(cfg: CfgNode, weights: str, metrics_path: str) -> dict:
    model = MaskFormerTrainer.build_model(cfg)
    AtomicDetectionCheckpointer(model, use_average=cfg.MODEL_EMA.USE_FOR_INFERENCE).load(weights)
    # the COCO and panoptic APIs print their own summaries: keep them in the log
    with open(os.path.join(cfg.OUTPUT_DIR, "log.txt"), "a") as log, redirect_stdout(log):
        results = MaskFormerTrainer.test(cfg, model)
    results = {group: dict(values) for group, values in results.items()}
    with atomic_open(metrics_path, "w") as f:
        json.dump(results, f, indent=2)
    return results


def _print_table(results: dict) -> None:
    rows = [
        (task, name, results[group][metric])
        for group, metric, task, name in TABLE_ROWS
        if metric in results.get(group, {})
    ]
    if not rows:
        print("  (no metrics: the config switches every MODEL.MASK_FORMER.TEST.*_ON off)")
        return
    print(f"  {'task':<10}{'metric':<16}{'value':>6}")
    print(f"  {'-' * 32}")
    for task, name, value in rows:
        print(f"  {task:<10}{name:<16}{value:6.1f}")


def _demo(cfg: CfgNode, weights: str, demo_dir: str, count: int, force: bool) -> list:
    image_root = synthetic_split_paths(_shapes_root(), "val")["image_root"]
    images = sorted(os.listdir(image_root))[:count]
    pictures = [os.path.join(demo_dir, name) for name in images]
    if not force and all(os.path.isfile(path) for path in pictures):
        print(f"Reusing the pictures in {demo_dir} (--force redoes them).")
        return pictures
    predictor = Predictor(
        cfg, weights, tasks=("panoptic", "instance", "semantic"), tune_cpu_allocator=True
    )
    report = run_images(
        predictor,
        [os.path.join(image_root, name) for name in images],
        demo_dir,
        "panoptic",
        batch_size=2,
    )
    for name, reason in report.failures:
        print(f"  failed: {name}: {reason}")
    return pictures


def main(argv=None) -> int:
    args = _parse_args(argv)
    # Relative paths (the data sets' $DETECTRON2_DATASETS default "datasets", the output) are
    # the repository's, wherever the script is started from; the user's paths stay theirs.
    args.config_file = os.path.abspath(args.config_file)
    args.output = os.path.abspath(args.output) if args.output != DEFAULT_OUTPUT else args.output
    os.chdir(ROOT)
    _setup_logging(args.output)
    keep_freed_memory()  # as train_net.py does on a CPU (mask2former/utils/cpu_memory.py)
    try:
        cfg = _config(args)
    except (FileNotFoundError, UnknownConfigKeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    shared_weights = os.path.join(cfg.OUTPUT_DIR, "model_final.safetensors")
    metrics_path = os.path.join(cfg.OUTPUT_DIR, EVALUATION_FILE)
    demo_dir = os.path.join(cfg.OUTPUT_DIR, "demo")
    if args.force:
        last_checkpoint = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
        for path in (weights, shared_weights, metrics_path, last_checkpoint):
            if os.path.exists(path):
                os.remove(path)

    _step(1, "Synthetic data set")
    root = ensure_synthetic_dataset(_shapes_root())
    print(f"Ready in {root}.")

    _step(2, f"Training {os.path.relpath(args.config_file, ROOT)} on the CPU")
    trained = not os.path.isfile(weights)
    if not trained:
        print(f"Reusing {weights} (--force retrains).")
    else:
        budget = f", at most {args.train_minutes:g} minutes" if args.train_minutes > 0 else ""
        print(
            f"{cfg.SOLVER.MAX_ITER} iterations of {cfg.SOLVER.IMS_PER_BATCH} images{budget}; "
            f"log in {os.path.join(cfg.OUTPUT_DIR, 'log.txt')}."
        )
        try:
            _train(cfg, weights, args.train_minutes * 60)
        except TrainingInterrupted as stop:
            print(
                f"\nStopped by {signal.Signals(stop.signum).name} after iteration "
                f"{stop.iteration}; {stop.checkpoint} is saved. Run the quickstart again to "
                "continue from there.",
                file=sys.stderr,
            )
            return stop.exit_status

    _step(3, f"Evaluating on {', '.join(cfg.DATASETS.TEST)}")
    if os.path.isfile(metrics_path) and not trained:
        print(f"Reusing {metrics_path} (--force re-evaluates).")
        with open(metrics_path) as f:
            results = json.load(f)
    else:
        results = _evaluate(cfg, weights, metrics_path)
    _print_table(results)

    _step(4, "Demo on validation images")
    pictures = _demo(cfg, weights, demo_dir, args.num_demo_images, args.force)

    print("\nDone.")
    print(f"  trained weights: {weights}")
    if os.path.isfile(shared_weights):
        print(f"  to share them:   {shared_weights}")
    print(f"  metrics (JSON):  {metrics_path}")
    print(
        f"  pictures:        {demo_dir}/ ({len(pictures)} images, with .panoptic.png/.json, "
        ".instances.json and .semantic.png results)"
    )
    print(f"  log:             {os.path.join(cfg.OUTPUT_DIR, 'log.txt')}")
    print(
        "Try: python demo/demo.py --config-file "
        f"{os.path.relpath(args.config_file, ROOT)} --input YOUR_IMAGES --output output/demo "
        f"--opts MODEL.WEIGHTS {weights}"
    )
    print(
        "Or in a browser: python demo/app.py --config-file "
        f"{os.path.relpath(args.config_file, ROOT)} --opts MODEL.WEIGHTS {weights}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
