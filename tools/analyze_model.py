#!/usr/bin/env python
"""Count a Mask2Former model's FLOPs, parameters and activations, or print its structure.

The counts are Detectron2's (fvcore: one multiply-add is one flop, counted from a
``torch.jit`` trace of the model's inference, post-processing included), with formulas for
the attention operators fvcore does not know (:mod:`mask2former.utils.analysis`). The paper's
FLOPs are averages over 100 validation images (COCO: short side 800); as in Detectron2's
``tools/analyze_model.py``, ``--num-inputs`` images of ``DATASETS.TEST[0]`` are read through
its test mapper. Without the data set, ``--input-size H W`` counts on random images of that
size instead (the size the model sees, after the test-time resize).

The weights do not change the counts of the network, only which post-processing paths run,
so the model is randomly initialised unless ``--weights`` names a checkpoint.

A video model (``VideoMaskFormer``, e.g. ``configs/youtubevis_2019/*.yaml``) is counted per
video, as it runs at inference: an input is a whole video of ``DATASETS.TEST[0]`` (all its
frames, through the video test mapper), or with ``--input-size`` a clip of ``--num-frames``
random frames (default ``INPUT.SAMPLING_FRAME_NUM``). Its FLOPs and activations grow with the
number of frames, so compare them at one clip length.

Examples:
    python tools/analyze_model.py --tasks flop parameter --num-inputs 100 \\
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml
    python tools/analyze_model.py --tasks flop --input-size 800 1216 --num-inputs 1 \\
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml
    python tools/analyze_model.py --tasks structure --config-file CONFIG
    python tools/analyze_model.py --tasks flop --input-size 360 640 --num-frames 5 -n 1 \\
        --config-file configs/youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml

Prints a table per task and, at the end, the figures as JSON.
"""

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import warnings
from collections import Counter
from typing import Dict, Iterable, List, Optional

import torch

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
# Tracing the post-processing warns that its data-dependent branches are fixed in the trace:
# the counts are those of the path each image took, which is what is wanted here.
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)

from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.analysis import parameter_count, parameter_count_table  # noqa: E402
from fvcore.nn import flop_count_table  # noqa: E402

from mask2former import modeling as _modeling  # noqa: E402, F401  only registration
from mask2former.config import UnknownConfigKeyError, add_opts_argument, load_config  # noqa: E402
from mask2former.data import is_video_config  # noqa: E402
from mask2former.engine import MaskFormerTrainer  # noqa: E402
from mask2former.engine.checkpoint import AtomicDetectionCheckpointer  # noqa: E402
from mask2former.utils.analysis import (  # noqa: E402
    activation_count_analysis,
    flop_count_analysis,
)
from mask2former.utils.device import runnable_device  # noqa: E402
from mask2former.utils.weights_io import WeightsFileError  # noqa: E402

TASKS = ("flop", "parameter", "activation", "structure")


class InputError(Exception):
    """No images to count on, or a weights file that is not there."""


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config YAML file")
    parser.add_argument(
        "--tasks", nargs="+", choices=TASKS, default=["flop", "parameter"], help="what to count"
    )
    parser.add_argument(
        "-n",
        "--num-inputs",
        type=int,
        default=100,
        help="images (videos) to average the flop and activation counts over (default 100)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="count on random images (video models: clips) of this size instead of "
        "DATASETS.TEST[0]",
    )
    parser.add_argument(
        "--num-frames",
        type=int,
        metavar="T",
        help="video models with --input-size: frames of each random clip (default "
        "INPUT.SAMPLING_FRAME_NUM)",
    )
    parser.add_argument("--weights", metavar="FILE", help="checkpoint to load (default: none)")
    parser.add_argument(
        "--device", help="where to run the traces (default: MODEL.DEVICE, the CPU without CUDA)"
    )
    parser.add_argument(
        "--depth", type=int, default=2, help="module depth of the per-module tables (default 2)"
    )
    add_opts_argument(parser)
    return parser


def random_inputs(
    height: int, width: int, count: int, num_frames: Optional[int] = None
) -> Iterable[List[Dict]]:
    """``count`` batches of one random image of ``height`` x ``width`` (0-255, as the test
    mapper gives), reported at that size; with ``num_frames``, of one video of that many
    random frames (a video model's input)."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(count):
        frames = [
            torch.randint(0, 256, (3, height, width), generator=generator).float()
            for _ in range(num_frames or 1)
        ]
        image = frames if num_frames else frames[0]
        yield [{"image": image, "height": height, "width": width}]


def dataset_inputs(cfg, count: int) -> Iterable[List[Dict]]:
    """The first ``count`` batches of DATASETS.TEST[0]'s test loader, as evaluation builds it
    (a video model's: one whole video per batch; bad samples left out)."""
    if not cfg.DATASETS.TEST:
        raise InputError("DATASETS.TEST is empty: name a data set in it")
    try:
        loader = MaskFormerTrainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])
    except FileNotFoundError as error:
        raise InputError(f"{error} Or count on random images: --input-size H W.") from error
    return itertools.islice(loader, count)


def _quiet(analysis):
    """``analysis`` without fvcore's warnings: the operators it cannot count are reported once
    for all inputs (``not_counted_per_input``), and the attention layers read their output
    projection's weights without calling it (an "uncalled module")."""
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


def _count(analyses, unit: float) -> Dict:
    """Mean, min and max totals of fvcore analyses (one per input) in ``unit``s, the mean by
    operator, and the operators left out (no formula: elementwise, indexing, ...)."""
    totals, by_operator, left_out = [], Counter(), Counter()
    for analysis in analyses:
        totals.append(analysis.total() / unit)
        by_operator.update({k: v / unit for k, v in analysis.by_operator().items()})
        left_out.update(analysis.unsupported_ops())
    if not totals:
        raise InputError("no input to count on: the data set gave no image")
    images = len(totals)
    return {
        "images": images,
        "mean": statistics.fmean(totals),
        "min": min(totals),
        "max": max(totals),
        "by_operator": {k: v / images for k, v in by_operator.most_common()},
        "not_counted_per_input": {k: v / images for k, v in left_out.most_common()},
    }


def count_flops(model, inputs: Iterable[List[Dict]], depth: int) -> Dict:
    """GFLOPs over ``inputs``; the per-module table of the first."""
    analyses = (_quiet(flop_count_analysis(model, batch)) for batch in inputs)
    first = next(analyses, None)
    table = None if first is None else flop_count_table(first, max_depth=depth)
    report = _count(itertools.chain([] if first is None else [first], analyses), 1e9)
    return {**report, "table_first_input": table}


def count_activations(model, inputs: Iterable[List[Dict]]) -> Dict:
    """Millions of activations (elements output by the counted operators) over ``inputs``."""
    return _count((_quiet(activation_count_analysis(model, batch)) for batch in inputs), 1e6)


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.num_inputs < 1:
        print("error: --num-inputs must be at least 1", file=sys.stderr)
        return 2
    if args.num_frames is not None and args.num_frames < 1:
        print("error: --num-frames must be at least 1", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config_file, args.opts)
        num_frames = None
        if is_video_config(cfg):
            num_frames = args.num_frames or cfg.INPUT.SAMPLING_FRAME_NUM
        elif args.num_frames is not None:
            raise InputError(
                f"--num-frames is for video models; {args.config_file} is an image model "
                f"({cfg.MODEL.META_ARCHITECTURE})"
            )
        # the counts are the same on any device: CUDA asked for but missing falls back to the
        # CPU with a warning, as in train_net.py
        cfg.MODEL.DEVICE = str(runnable_device(args.device or cfg.MODEL.DEVICE))
        model = build_model(cfg).eval()
        if args.weights:
            if not os.path.isfile(args.weights):
                raise InputError(f"weights file '{args.weights}' (--weights) does not exist")
            AtomicDetectionCheckpointer(model).load(args.weights)
        report: Dict = {"config_file": args.config_file, "weights": args.weights or None}

        def inputs():
            if args.input_size:
                return random_inputs(*args.input_size, args.num_inputs, num_frames)
            return dataset_inputs(cfg, args.num_inputs)

        with torch.no_grad():
            if "flop" in args.tasks:
                report["flop"] = count_flops(model, inputs(), args.depth)
            if "activation" in args.tasks:
                report["activation"] = count_activations(model, inputs())
    except (FileNotFoundError, UnknownConfigKeyError, WeightsFileError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if "parameter" in args.tasks:
        report["parameter"] = {
            "millions": parameter_count(model)[""] / 1e6,
            "table": parameter_count_table(model, max_depth=args.depth),
        }
    print_report(report, model if "structure" in args.tasks else None)
    return 0


def print_report(report: Dict, model) -> None:
    source = "random" if report.get("weights") is None else report["weights"]
    print(f"{report['config_file']} (weights: {source})")
    for task, title, unit in (("flop", "FLOPs", "GFLOPs"), ("activation", "Activations", "M")):
        counts = report.get(task)
        if not counts:
            continue
        if task == "flop":
            print("\nFLOPs (fvcore: 1 multiply-add = 1 flop) of the first input:")
            print(counts["table_first_input"])
        print(
            f"\n{title} over {counts['images']} input(s), {unit}: mean {counts['mean']:.2f} "
            f"(min {counts['min']:.2f}, max {counts['max']:.2f}); by operator:"
        )
        for name, value in counts["by_operator"].items():
            print(f"  {name:32s} {value:10.2f}")
        if task == "flop" and counts["not_counted_per_input"]:
            names = ", ".join(f"{k} {v:g}x" for k, v in counts["not_counted_per_input"].items())
            print(f"  not counted (no formula: elementwise, indexing, ...), per input: {names}")
    parameter = report.get("parameter")
    if parameter:
        print(f"\nParameters: {parameter['millions']:.2f} M\n{parameter['table']}")
    if model is not None:
        print(f"\nStructure:\n{model}")
    figures = {
        key: {k: v for k, v in value.items() if k not in ("table_first_input", "table")}
        if isinstance(value, dict)
        else value
        for key, value in report.items()
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
