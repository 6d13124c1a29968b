#!/usr/bin/env python
"""Benchmark evaluation in mixed precision (``TEST.AMP``): time and metrics per precision.

Evaluates ``--config-file`` with ``--weights`` on its ``DATASETS.TEST`` through the real
evaluators (``MaskFormerTrainer.test``, as ``train_net.py --eval-only`` does), once per
``--precisions`` entry ("float32", or an autocast dtype of ``TEST.AMP.PRECISION``), each in a
fresh process, after evaluating ``--warmup`` images. Reports the wall time of the evaluation
(inference, post-processing and the evaluators), the time per image, and the headline metrics
(PQ, SQ, RQ, AP, AP50, AP75, mIoU, pACC where present) with their change from the first
precision.

Prints a table and then the results as JSON.

Usage:
    python tools/benchmark_evaluation.py \\
        --config-file configs/shapes/maskformer2_R18_panoptic.yaml \\
        --weights output/quickstart/model_final.pth --precisions float32 bfloat16 --threads 2
"""

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from typing import Dict, List

import torch

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import mask2former.data  # noqa: E402, F401  only registration
import mask2former.modeling  # noqa: E402, F401  only registration
from mask2former.config import add_opts_argument, load_config  # noqa: E402
from mask2former.engine import MaskFormerTrainer  # noqa: E402
from mask2former.engine.trainer import evaluation_model  # noqa: E402
from mask2former.utils.benchmarking import (  # noqa: E402
    add_setting_arguments,
    machine_fields,
    run_child,
    start_setting,
)

HEADLINE = ("PQ", "SQ", "RQ", "AP", "AP50", "AP75", "mIoU", "pACC")
PRECISIONS = ("float32", "float16", "bfloat16")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="the weights to evaluate")
    parser.add_argument(
        "--precisions", nargs="+", choices=PRECISIONS, default=["float32", "bfloat16"]
    )
    parser.add_argument("--warmup", type=int, default=2, help="images evaluated before timing")
    add_setting_arguments(parser, child_type=str, child_choices=PRECISIONS)
    add_opts_argument(parser)
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def _headline(results: Dict) -> Dict[str, float]:
    return {
        f"{task}/{name}": round(float(value), 3)
        for task, metrics in results.items()
        if isinstance(metrics, dict)
        for name, value in metrics.items()
        if name in HEADLINE
    }


def run_setting(args: argparse.Namespace, precision: str) -> Dict:
    """One evaluation in this process."""
    start_setting(args.threads, args.device)
    amp = ["TEST.AMP.ENABLED", str(precision != "float32")]
    if precision != "float32":
        amp += ["TEST.AMP.PRECISION", precision]
    cfg = load_config(args.config_file, ["MODEL.DEVICE", args.device, *amp, *args.opts])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(args.weights)
    images = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TEST)
    if args.warmup:
        warm = evaluation_model(cfg, model).eval()
        loader = MaskFormerTrainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])
        with torch.no_grad():
            for _, batch in zip(range(args.warmup), loader):
                warm(batch)
    with tempfile.TemporaryDirectory() as output_dir:
        cfg.OUTPUT_DIR = output_dir  # the evaluators' files, not kept
        start = time.perf_counter()
        results = MaskFormerTrainer.test(cfg, model)
        seconds = time.perf_counter() - start
    return {
        "precision": precision,
        "images": images,
        "seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / max(images, 1), 4),
        "metrics": _headline(results),
    }


def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_setting(args, args.child)))
        return {}
    rows: List[Dict] = []
    for precision in args.precisions:
        command = [
            sys.executable, os.path.abspath(__file__),
            "--config-file", args.config_file,
            "--weights", args.weights,
            "--warmup", str(args.warmup),
            "--threads", str(args.threads),
            "--device", args.device,
            "--child", precision,
            "--opts", *args.opts,
        ]  # fmt: skip
        rows.append(run_child(command, f"evaluation in {precision}"))
    reference = rows[0]["metrics"]
    for row in rows:
        row["change"] = {
            name: round(value - reference[name], 3)
            for name, value in row["metrics"].items()
            if name in reference
        }
    report = {
        "config": args.config_file,
        "weights": args.weights,
        "warmup": args.warmup,
        **machine_fields(args),
        "rows": rows,
    }
    names = list(reference)
    print(f"{'precision':10} {'s':>8} {'s/image':>8} " + " ".join(f"{n:>16}" for n in names))
    for row in rows:
        values = " ".join(f"{row['metrics'].get(n, float('nan')):>16.3f}" for n in names)
        timing = f"{row['seconds']:>8.2f} {row['seconds_per_image']:>8.4f}"
        print(f"{row['precision']:10} {timing} {values}")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
