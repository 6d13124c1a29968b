#!/usr/bin/env python
"""Benchmark sliding-window inference against whole-image inference on a large image.

Runs ``mask2former.Predictor`` (randomly initialised weights unless ``--weights``; the
``--task`` output only: semantic, instance or panoptic; no test-time resize,
``INPUT.MIN_SIZE_TEST 0``)
on a random picture of
``--image-size``: once on the whole image, and once per ``--windows-per-pass`` value in windows
of ``--window`` every ``--stride`` pixels (``MODEL.MASK_FORMER.TEST.SLIDING_WINDOW``). Each
setting runs in a fresh process and reports the median seconds of ``--repeats`` predictions
after a warm-up, and the peak memory: the process's peak resident memory on a CPU (with what it
held before the first prediction), ``torch.cuda.max_memory_allocated`` on CUDA. For the
semantic task the pixels on which the sliding result's arg-max agrees with the whole image's
are reported too (random weights: only a sanity check, not an accuracy figure); for the
instance task, the number of instances; for the panoptic task, the number of segments.

Prints a table and then the results as JSON.

Usage:
    python tools/benchmark_sliding_window.py \\
        --config-file configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml \\
        --image-size 2048 2048 --window 512 512 --stride 341 341 --windows-per-pass 1 4
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from mask2former import Predictor  # noqa: E402
from mask2former.config import add_opts_argument  # noqa: E402
from mask2former.utils.benchmarking import (  # noqa: E402
    add_setting_arguments,
    machine_fields,
    memory_label,
    peak_memory_mib,
    run_child,
    start_setting,
)

DEFAULT_CONFIG = "configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--weights", default="", help="default: random initialisation")
    parser.add_argument("--image-size", type=int, nargs=2, default=(2048, 2048), metavar=("H", "W"))
    parser.add_argument("--window", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--stride", type=int, nargs=2, default=(341, 341), metavar=("H", "W"))
    parser.add_argument("--windows-per-pass", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--task", choices=("semantic", "instance", "panoptic"), default="semantic")
    parser.add_argument("--no-whole", action="store_true", help="skip the whole-image run")
    parser.add_argument("--repeats", type=int, default=1)
    add_setting_arguments(parser)  # --threads, --device; the child's windows per pass, 0: whole
    parser.add_argument("--labels-out", help=argparse.SUPPRESS)
    add_opts_argument(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1 or min(args.windows_per_pass) < 1:
        parser.error("--repeats and --windows-per-pass must be at least 1")
    return args


def _count(prediction, task: str) -> Optional[int]:
    """Instances (instance task) or segments (panoptic task) predicted; None for semantic."""
    if task == "instance":
        return len(prediction.instances.scores)
    if task == "panoptic":
        return len(prediction.panoptic.segments)
    return None


def run_setting(args: argparse.Namespace, windows_per_pass: int) -> Dict:
    """One setting in this process: 0 windows per pass is the whole image."""
    device = start_setting(args.threads, args.device)
    opts = ["MODEL.DEVICE", args.device, "INPUT.MIN_SIZE_TEST", "0", *args.opts]
    if windows_per_pass > 0:
        sliding = "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW"
        opts += [f"{sliding}.ENABLED", "True", f"{sliding}.SIZE", str(list(args.window))]
        opts += [f"{sliding}.STRIDE", str(list(args.stride))]
        opts += [f"{sliding}.WINDOWS_PER_PASS", str(windows_per_pass)]
    torch.manual_seed(0)
    predictor = Predictor(args.config_file, args.weights, opts=opts, tasks=[args.task])
    height, width = args.image_size
    picture = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    predictor.predict_arrays([np.zeros((64, 64, 3), dtype=np.uint8)])  # warm-up, small
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before_mib = peak_memory_mib(device)
    seconds: List[float] = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        (prediction,) = predictor.predict_arrays([picture])
        seconds.append(time.perf_counter() - start)
    if args.labels_out and args.task == "semantic":
        np.save(args.labels_out, prediction.semantic.label_map)
    windows: Optional[int] = None
    if windows_per_pass > 0:
        windows = len(predictor.model.sliding_window.boxes(height, width))
    return {
        "setting": "whole image" if windows_per_pass == 0 else f"windows, {windows_per_pass}/pass",
        "windows": windows,
        "seconds": round(statistics.median(seconds), 3),
        "peak_mib": round(peak_memory_mib(device)),
        "before_mib": round(before_mib),
        "instances": _count(prediction, args.task),
    }


def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_setting(args, args.child)))
        return {}
    settings = ([] if args.no_whole else [0]) + list(args.windows_per_pass)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for setting in settings:
            labels = os.path.join(folder, f"labels{setting}.npy")
            command = [
                sys.executable, os.path.abspath(__file__),
                "--config-file", args.config_file,
                "--weights", args.weights,
                "--image-size", *map(str, args.image_size),
                "--window", *map(str, args.window),
                "--stride", *map(str, args.stride),
                "--repeats", str(args.repeats),
                "--threads", str(args.threads),
                "--device", args.device,
                "--task", args.task,
                "--child", str(setting),
                "--labels-out", labels,
                "--opts", *args.opts,
            ]  # fmt: skip
            row = run_child(command, f"setting {setting} (windows per pass; 0: whole image)")
            row["labels"] = np.load(labels) if args.task == "semantic" else None
            rows.append(row)
    reference = rows[0]["labels"] if not args.no_whole and args.task == "semantic" else None
    for row in rows:
        labels = row.pop("labels")
        if reference is not None:
            row["same_label_as_whole"] = round(float((labels == reference).mean()), 4)
    memory = memory_label(args.device)
    report = {
        "config": args.config_file,
        "task": args.task,
        "image_size": list(args.image_size),
        "window": list(args.window),
        "stride": list(args.stride),
        "repeats": args.repeats,
        **machine_fields(args),
        "rows": rows,
    }
    header = f"{'setting':18} {'windows':>7} {'s':>8} {memory:>13} {'before':>7}"
    print(header + f" {'same':>6} {'instances':>9}")
    for row in rows:
        same = row.get("same_label_as_whole")
        print(
            f"{row['setting']:18} {row['windows'] or '-':>7} {row['seconds']:>8.3f} "
            f"{row['peak_mib']:>13} {row['before_mib']:>7} "
            f"{'-' if same is None else format(same, '.4f'):>6} {row['instances'] or '-':>9}"
        )
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
