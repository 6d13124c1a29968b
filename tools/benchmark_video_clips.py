#!/usr/bin/env python
"""Benchmark long videos in clips: video AP and time against CLIP_LENGTH and CLIP_OVERLAP.

A trained video model (``--weights``, e.g. ``train_net.py`` on
``configs/shapes/video_maskformer2_R18.yaml``) is evaluated through the YouTube-VIS evaluator
on a validation set of synthetic moving shapes with videos of ``--num-frames`` frames (longer
than ``shapes_video``'s 8; generated into ``--data-dir`` on first use), once per
``--settings`` entry ``CLIP_LENGTH:CLIP_OVERLAP`` (``0:0``: the whole video at once, as in the
official release). Reports per setting the video AP, AP50, AP75, AR1, AR10 and the seconds
per frame of the evaluation (model and post-processing).

Prints a table and then the results as JSON.

Usage:
    python train_net.py --config-file configs/shapes/video_maskformer2_R18.yaml \\
        MODEL.DEVICE cpu OUTPUT_DIR output/shapes_video
    python tools/benchmark_video_clips.py --config-file configs/shapes/video_maskformer2_R18.yaml \\
        --weights output/shapes_video/model_final.pth --settings 0:0 4:0 4:1 8:1
"""

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Tuple

import torch

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402

from mask2former.config import add_opts_argument, load_config  # noqa: E402
from mask2former.data.datasets.ytvis import register_ytvis_instances  # noqa: E402
from mask2former.data.synthetic_video import (  # noqa: E402
    SyntheticVideoConfig,
    ensure_synthetic_video_dataset,
    synthetic_video_split_paths,
)
from mask2former.engine import MaskFormerTrainer  # noqa: E402
from mask2former.engine.checkpoint import AtomicDetectionCheckpointer  # noqa: E402

DATASET_NAME = "shapes_video_long_val"
METRICS = ("AP", "AP50", "AP75", "AR1", "AR10")


def _setting(text: str) -> Tuple[int, int]:
    try:
        length, overlap = (int(part) for part in text.split(":"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a setting is CLIP_LENGTH:CLIP_OVERLAP, e.g. 8:1"
        ) from error
    if length < 0 or (length > 0 and not 0 <= overlap < length):
        raise argparse.ArgumentTypeError(
            f"{text!r}: CLIP_LENGTH must be >= 0 and CLIP_OVERLAP in [0, CLIP_LENGTH)"
        )
    return length, overlap


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="a VideoMaskFormer config")
    parser.add_argument("--weights", required=True, help="the trained model")
    parser.add_argument(
        "--settings",
        type=_setting,
        nargs="+",
        default=[(0, 0), (4, 0), (4, 1), (8, 0), (8, 1), (16, 1)],
        help="CLIP_LENGTH:CLIP_OVERLAP pairs; 0:0 is the whole video at once",
    )
    parser.add_argument("--num-videos", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--data-dir",
        default=os.path.join("output", "benchmark_video_clips"),
        help="where the long videos are generated (reused when they match)",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    add_opts_argument(parser)
    args = parser.parse_args(argv)
    if args.num_videos < 1 or args.num_frames < 1:
        parser.error("--num-videos and --num-frames must be at least 1")
    return args


def register_long_videos(args: argparse.Namespace) -> None:
    """Generate (if needed) and register the long validation videos as DATASET_NAME."""
    data = SyntheticVideoConfig(
        num_train=0, num_val=args.num_videos, num_frames=args.num_frames, seed=args.seed
    )
    root = ensure_synthetic_video_dataset(os.path.abspath(args.data_dir), data)
    paths = synthetic_video_split_paths(root, "val")
    shapes = MetadataCatalog.get("shapes_video_val")
    metadata = {
        name: shapes.get(name)
        for name in ("thing_classes", "thing_colors", "thing_dataset_id_to_contiguous_id")
    }
    register_ytvis_instances(DATASET_NAME, metadata, paths["json_file"], paths["image_root"])


def main(argv=None) -> Dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    register_long_videos(args)
    opts = ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", args.weights] + args.opts
    cfg = load_config(args.config_file, opts)
    cfg.DATASETS.TEST = (DATASET_NAME,)
    cfg.freeze()
    model = MaskFormerTrainer.build_model(cfg)
    AtomicDetectionCheckpointer(model, use_average=cfg.MODEL_EMA.USE_FOR_INFERENCE).load(
        args.weights
    )
    model.eval()
    frames = args.num_videos * args.num_frames
    rows: List[Dict] = []
    for length, overlap in args.settings:
        model.clip_length, model.clip_overlap = length, overlap
        with tempfile.TemporaryDirectory() as folder:
            evaluator = MaskFormerTrainer.build_evaluator(cfg, DATASET_NAME, folder)
            loader = MaskFormerTrainer.build_test_loader(cfg, DATASET_NAME)
            start = time.perf_counter()
            results = inference_on_dataset(model, loader, evaluator)
            seconds = time.perf_counter() - start
        segm = results["segm"]
        row = {"clip_length": length, "clip_overlap": overlap}
        row.update({name: round(float(segm[name]), 2) for name in METRICS})
        row["seconds_per_frame"] = round(seconds / frames, 4)
        rows.append(row)
    report = {
        "config": args.config_file,
        "weights": args.weights,
        "videos": args.num_videos,
        "frames_per_video": args.num_frames,
        "seed": args.seed,
        "threads": args.threads,
        "device": args.device,
        "opts": args.opts,
        "rows": rows,
    }
    header = f"{'CLIP_LENGTH':>11} {'OVERLAP':>7} " + " ".join(f"{m:>6}" for m in METRICS)
    print(header + f" {'s/frame':>8}")
    for row in rows:
        length = row["clip_length"] or "whole"
        metrics = " ".join(f"{row[m]:>6.1f}" for m in METRICS)
        print(f"{length:>11} {row['clip_overlap']:>7} {metrics} {row['seconds_per_frame']:>8.4f}")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
