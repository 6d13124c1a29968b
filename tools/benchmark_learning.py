#!/usr/bin/env python
"""Learning benchmark: train the small shapes config on the CPU and evaluate PQ, AP and mIoU
(or, with ``configs/shapes/video_maskformer2_R18.yaml``, video AP on the moving shapes).

Evaluates the untrained (randomly initialised) model, trains for a fixed number of iterations
and evaluates again (with ``MODEL_EMA.ENABLED`` in the overrides, the moving average of the
weights too), all through the real evaluators on the synthetic validation split, then
prints the figures as JSON and as a table together with the wall times. The synthetic data set
is generated under $DETECTRON2_DATASETS/shapes when missing.

Example::

    python tools/benchmark_learning.py --threads 1 --json-out output/benchmark_learning.json
"""

import argparse
import json
import logging
import math
import os
import time

import torch
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from mask2former import modeling as _modeling  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.engine import MaskFormerTrainer, build_evaluator
from mask2former.utils.cpu_memory import keep_freed_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "shapes", "maskformer2_R18_panoptic.yaml")
# (task in the evaluation results, metric, column name)
METRICS = [
    ("panoptic_seg", "PQ", "PQ"),
    ("panoptic_seg", "PQ_th", "PQ things"),
    ("panoptic_seg", "PQ_st", "PQ stuff"),
    ("segm", "AP", "mask AP"),
    ("segm", "AP50", "mask AP50"),
    ("segm", "AR10", "AR10 (video)"),
    ("sem_seg", "mIoU", "mIoU"),
    ("sem_seg", "pACC", "pixel acc."),
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--max-iter", type=int, default=None, help="default: SOLVER.MAX_ITER")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--output-dir", default=os.path.join(REPO, "output", "benchmark_learning"))
    parser.add_argument("--json-out", default=None, help="also write the JSON result here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args()


def evaluate(cfg, model, folder):
    evaluators = [
        build_evaluator(cfg, name, os.path.join(folder, name)) for name in cfg.DATASETS.TEST
    ]
    start = time.perf_counter()
    results = MaskFormerTrainer.test(cfg, model, evaluators)
    elapsed = time.perf_counter() - start
    figures = {}
    for task, metric, _ in METRICS:
        if task in results and metric in results[task]:
            figures[metric] = float(results[task][metric])
    return figures, elapsed


def table(columns):
    """A markdown table of the metrics, one column per ``{name: figures}`` entry."""
    names = list(columns)
    rows = [("metric", *names)]
    for _, metric, column in METRICS:
        if all(metric in figures for figures in columns.values()):
            rows.append((column, *(f"{columns[name][metric]:.1f}" for name in names)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as train_net.py does on a CPU
    setup_logger(name="mask2former")
    setup_logger()
    logging.getLogger("fvcore").setLevel(logging.WARNING)
    opts = ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", args.output_dir, "TEST.EVAL_PERIOD", "0"]
    if args.max_iter is not None:
        opts += ["SOLVER.MAX_ITER", str(args.max_iter)]
    cfg = load_config(args.config_file, opts + list(args.opts))
    cfg.freeze()
    os.makedirs(args.output_dir, exist_ok=True)
    total_start = time.perf_counter()

    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else 0)
    untrained_model = build_model(cfg)
    untrained, untrained_eval_s = evaluate(
        cfg, untrained_model, os.path.join(args.output_dir, "untrained")
    )
    del untrained_model

    train_cfg = cfg.clone()
    train_cfg.defrost()
    train_cfg.DATASETS.TEST = ()  # evaluate below, outside the timed training
    train_cfg.freeze()
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else 0)
    trainer = MaskFormerTrainer(train_cfg)
    trainer.resume_or_load(resume=False)
    train_start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - train_start
    trained, trained_eval_s = evaluate(cfg, trainer.model, os.path.join(args.output_dir, "trained"))
    columns = {"untrained": untrained, "trained": trained}
    eval_seconds = {"untrained": round(untrained_eval_s, 1), "trained": round(trained_eval_s, 1)}
    if trainer.ema is not None:  # MODEL_EMA: the moving average of the weights too
        folder = os.path.join(args.output_dir, "trained_average")
        columns["trained, average"], seconds = evaluate(cfg, trainer.ema.model, folder)
        eval_seconds["trained_average"] = round(seconds, 1)
    total_s = time.perf_counter() - total_start

    result = {
        "config": os.path.relpath(args.config_file, REPO),
        "overrides": list(args.opts),
        "iterations": cfg.SOLVER.MAX_ITER,
        "images_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "torch_threads": args.threads,
        "untrained": untrained,
        "trained": trained,
        "trained_average": columns.get("trained, average"),
        "train_seconds": round(train_s, 1),
        "seconds_per_iteration": round(train_s / cfg.SOLVER.MAX_ITER, 3),
        "eval_seconds": eval_seconds,
        "total_seconds": round(total_s, 1),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    print()
    print(table(columns))
    print()
    print(
        f"train {train_s / 60:.1f} min ({cfg.SOLVER.MAX_ITER} iterations x "
        f"{cfg.SOLVER.IMS_PER_BATCH} images), total wall time {total_s / 60:.1f} min"
    )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    if not all(math.isfinite(v) for v in trained.values()):
        raise SystemExit("non-finite metrics after training")


if __name__ == "__main__":
    main()
