#!/usr/bin/env python
"""Benchmark gradient accumulation: peak memory and time of a training step against the number
of batches it is split into (``SOLVER.GRADIENT_ACCUMULATION_STEPS``).

Every setting trains on the same ``--ims-per-batch`` images per optimizer step (random pictures
of ``--image-size`` with random rectangles as instances), split into 1, 2, 4, ... batches, with
the config's optimizer and training loop (``build_train_loop``, AMP as the config says). Each
setting runs in a fresh process, so that its peak memory is its own: on a CPU the peak resident
memory of the process (and what it held before the first step), on CUDA the peak of
``torch.cuda.max_memory_allocated``. The time is the median of ``--iterations`` optimizer steps
after one warm-up step.

Prints a table and then the results as JSON.

Usage:
    python tools/benchmark_accumulation.py \\
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \\
        --ims-per-batch 4 --image-size 512 --steps 1 2 4 --threads 2
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from typing import Dict, List

import torch

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import mask2former.modeling  # noqa: E402, F401  only registration
from mask2former.config import add_opts_argument, load_config  # noqa: E402
from mask2former.engine import build_optimizer, build_train_loop  # noqa: E402
from mask2former.utils.benchmarking import (  # noqa: E402
    add_setting_arguments,
    machine_fields,
    memory_label,
    peak_memory_mib,
    run_child,
    start_setting,
)

INSTANCES_PER_IMAGE = 8


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config-file",
        default="configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
    )
    parser.add_argument("--ims-per-batch", type=int, default=4, help="images per optimizer step")
    parser.add_argument("--image-size", type=int, default=512, help="square training images")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--iterations", type=int, default=2, help="timed steps after a warm-up")
    add_setting_arguments(parser)  # --threads, --device
    add_opts_argument(parser)
    args = parser.parse_args(argv)
    if args.iterations < 1 or min(args.steps) < 1:
        parser.error("--iterations and --steps must be at least 1")
    for steps in args.steps:
        if args.ims_per_batch % steps:
            parser.error(f"--steps {steps} does not divide --ims-per-batch {args.ims_per_batch}")
    return args


def _image(generator: torch.Generator, size: int, num_classes: int) -> Dict:
    masks = torch.zeros(INSTANCES_PER_IMAGE, size, size, dtype=torch.bool)
    for mask in masks:
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        height, width = torch.randint(size // 8, size // 2, (2,), generator=generator).tolist()
        mask[top : top + height, left : left + width] = True
    classes = torch.randint(0, num_classes, (INSTANCES_PER_IMAGE,), generator=generator)
    return {
        "image": torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8),
        "instances": Instances((size, size), gt_classes=classes, gt_masks=BitMasks(masks)),
    }


def run_setting(args: argparse.Namespace, steps: int) -> Dict:
    """One optimizer-step configuration, in this process: warm-up, then timed steps."""
    device = start_setting(args.threads, args.device)
    opts = [
        "MODEL.DEVICE", args.device,
        "MODEL.WEIGHTS", "",
        "SOLVER.IMS_PER_BATCH", str(args.ims_per_batch),
        "SOLVER.GRADIENT_ACCUMULATION_STEPS", str(steps),
        *args.opts,
    ]  # fmt: skip
    cfg = load_config(args.config_file, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    generator = torch.Generator().manual_seed(0)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    images = [_image(generator, args.image_size, num_classes) for _ in range(args.ims_per_batch)]
    per_batch = args.ims_per_batch // steps
    batches = [images[i : i + per_batch] for i in range(0, len(images), per_batch)]
    loader = (batch for _ in range(args.iterations + 1) for batch in batches)
    loop = build_train_loop(cfg, model, loader, optimizer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before_mib = peak_memory_mib(device)
    seconds: List[float] = []
    with EventStorage(0) as storage:
        loop.storage = storage
        for iteration in range(args.iterations + 1):
            loop.iter = storage.iter = iteration
            start = time.perf_counter()
            loop.run_step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if iteration > 0:  # the first step is a warm-up
                seconds.append(time.perf_counter() - start)
        total_loss = storage.history("total_loss").latest()
    return {
        "accumulation_steps": steps,
        "images_per_batch": per_batch,
        "seconds_per_step": round(statistics.median(seconds), 3),
        "peak_mib": round(peak_memory_mib(device)),
        "before_training_mib": round(before_mib),
        "last_total_loss": round(total_loss, 3),
    }


def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_setting(args, args.child)))
        return {}
    rows = []
    for steps in args.steps:
        command = [
            sys.executable, os.path.abspath(__file__),
            "--config-file", args.config_file,
            "--ims-per-batch", str(args.ims_per_batch),
            "--image-size", str(args.image_size),
            "--iterations", str(args.iterations),
            "--threads", str(args.threads),
            "--device", args.device,
            "--steps", str(steps),
            "--child", str(steps),
            "--opts", *args.opts,
        ]  # fmt: skip
        rows.append(run_child(command, f"accumulation steps {steps}"))
    memory = memory_label(args.device)
    report = {
        "config": args.config_file,
        "ims_per_batch": args.ims_per_batch,
        "image_size": args.image_size,
        "iterations": args.iterations,
        **machine_fields(args),
        "rows": rows,
    }
    print(f"{'steps':>5} {'images/batch':>12} {'s/step':>8} {memory:>13} {'before':>8} {'loss':>8}")
    for row in rows:
        print(
            f"{row['accumulation_steps']:>5} {row['images_per_batch']:>12} "
            f"{row['seconds_per_step']:>8.3f} {row['peak_mib']:>13} "
            f"{row['before_training_mib']:>8} {row['last_total_loss']:>8.3f}"
        )
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
