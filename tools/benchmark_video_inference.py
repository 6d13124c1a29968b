#!/usr/bin/env python
"""Benchmark video instance segmentation inference: time and memory against the clip length.

A video model (``VideoMaskFormer``) sees a whole clip in one pass, as in the official
release, so its cost grows with the number of frames. This runs ``mask2former.VideoPredictor``
(randomly initialised weights unless ``--weights``) on clips of random frames of
``--frame-size`` for each of ``--lengths`` (in increasing order, after a 2-frame warm-up) and
reports per length: the seconds per clip (median of ``--repeats``; the masks of every frame
made at the frame size, as the demo draws them), the seconds per frame,
and the process's peak resident memory after that length (the peak only grows, so it is the
peak of the longest clip so far). With ``--image-config`` it also times the image model of
that config on the same frames one at a time (the frame-by-frame way, ``Predictor``), resized
to the video config's test size.

With ``--opts MODEL.MASK_FORMER.TEST.CLIP_LENGTH N`` the video model runs a clip longer than
N frames in clips of N frames linked into tracks, whose memory does not grow with the clip's
length the way the whole clip's does.

Prints a table and then the results as JSON.

Usage:
    python tools/benchmark_video_inference.py \\
        --config-file configs/youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml \\
        --image-config configs/coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml \\
        --frame-size 360 640 --lengths 4 8 16 --threads 2 \
        --opts MODEL.MASK_FORMER.TEST.FRAMES_PER_PASS 0
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from typing import Dict, List

import numpy as np
import torch

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from mask2former import Predictor, VideoPredictor  # noqa: E402
from mask2former.config import add_opts_argument  # noqa: E402
from mask2former.utils.benchmarking import peak_rss_mib  # noqa: E402
from mask2former.utils.cpu_memory import keep_freed_memory  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="a VideoMaskFormer config")
    parser.add_argument("--weights", default="", help="default: random initialisation")
    parser.add_argument("--image-config", help="also time this image config frame by frame")
    parser.add_argument("--frame-size", type=int, nargs=2, default=(360, 640), metavar=("H", "W"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    add_opts_argument(parser)
    args = parser.parse_args(argv)
    if min(args.lengths) < 1 or args.repeats < 1:
        parser.error("--lengths and --repeats must be at least 1")
    return args


def _median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _row(model: str, frames: int, seconds: float) -> Dict:
    """One line of the report, with the peak memory so far."""
    return {
        "model": model,
        "frames": frames,
        "seconds": round(seconds, 3),
        "seconds_per_frame": round(seconds / frames, 3),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def main(argv=None) -> Dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the demo does on a CPU
    opts = ["MODEL.DEVICE", args.device]
    video = VideoPredictor(args.config_file, args.weights, opts=opts + args.opts)
    height, width = args.frame_size
    rng = np.random.default_rng(0)
    frames = [
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(max(args.lengths))
    ]

    def predict(clip):
        # and every frame's masks at the frame size, which the predictor makes on demand
        prediction = video.predict_arrays(clip)
        for index in range(prediction.num_frames):
            prediction.frame(index)

    predict(frames[:2])  # warm-up
    rows: List[Dict] = []
    for length in sorted(args.lengths):
        clip = frames[:length]
        seconds = _median_seconds(lambda clip=clip: predict(clip), args.repeats)
        rows.append(_row("video", length, seconds))
    if args.image_config:
        # at the video config's test size, so that both see the same pixels
        sizes = ["INPUT.MIN_SIZE_TEST", str(video.cfg.INPUT.MIN_SIZE_TEST)]
        sizes += ["INPUT.MAX_SIZE_TEST", str(video.cfg.INPUT.MAX_SIZE_TEST)]
        image = Predictor(args.image_config, "", opts=opts + sizes, tasks=["instance"])
        image.predict_arrays(frames[:1])  # warm-up
        length = max(args.lengths)

        def frame_by_frame():
            for frame in frames[:length]:
                image.predict_arrays([frame])

        seconds = _median_seconds(frame_by_frame, args.repeats)
        rows.append(_row("image, frame by frame", length, seconds))
    report = {
        "config": args.config_file,
        "image_config": args.image_config,
        "frame_size": [height, width],
        "threads": args.threads,
        "device": args.device,
        "frames_per_pass": video.cfg.MODEL.MASK_FORMER.TEST.FRAMES_PER_PASS,
        "opts": args.opts,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    print(f"{'model':22} {'frames':>6} {'s':>8} {'s/frame':>8} {'peak MiB':>9}")
    for row in rows:
        print(
            f"{row['model']:22} {row['frames']:>6} {row['seconds']:>8.3f} "
            f"{row['seconds_per_frame']:>8.3f} {row['peak_rss_mib']:>9}"
        )
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
