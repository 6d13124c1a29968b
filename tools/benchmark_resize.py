"""Benchmark the mask resize of post-processing: banded block sizes against the official path.

``mask2former.modeling.postprocessing.resize_mask_logits`` resizes an image's predicted masks
(1/4 of the padded input) to the output size. The official computation (``fused=False``)
upsamples them to the padded size, crops the image and resizes the crop; the fused one
applies the same weights as two banded matrix products, ``block_size`` output rows or
columns at a time. This times both, for several block sizes, at three data sets' sizes
(25 masks, the confident queries of a typical image; ``--masks``), and checks that every
variant gives the official result.

Timing: the variants run in turn, ``--repeats`` rounds, and each keeps its fastest round,
which is the least disturbed by other work on a shared machine.

Prints a table and, at the end, the results as JSON.

Usage:
    python tools/benchmark_resize.py [--threads 1] [--repeats 5] [--masks 25]
"""

import argparse
import json
import time
from typing import Dict, List

import torch

from mask2former.modeling.postprocessing import BAND_BLOCK_SIZE, resize_mask_logits

# name -> (mask size, padded input size, image size, output size)
CASES = {
    "COCO 800x1199 -> 427x640": ((200, 304), (800, 1216), (800, 1199), (427, 640)),
    "ADE20K 512x683": ((128, 176), (512, 704), (512, 683), (512, 683)),
    "Cityscapes 1024x2048": ((256, 512), (1024, 2048), (1024, 2048), (1024, 2048)),
}
BLOCK_SIZES = (8, 16, 32, 64, 128)
DENSE = 10**9  # one block: a single dense product per axis


def run_case(name: str, masks: int, repeats: int) -> List[Dict]:
    mask_size, padded, image, output = CASES[name]
    logits = torch.randn(masks, *mask_size, generator=torch.Generator().manual_seed(0))
    variants = {"official (two interpolations)": {"fused": False}}
    for block_size in BLOCK_SIZES:
        variants[f"fused, block {block_size}"] = {"block_size": block_size}
    variants["fused, dense"] = {"block_size": DENSE}
    official = resize_mask_logits(logits, padded, image, output, fused=False)
    best = {label: float("inf") for label in variants}
    max_error = {}
    for _ in range(repeats):
        for label, kwargs in variants.items():
            start = time.perf_counter()
            result = resize_mask_logits(logits, padded, image, output, **kwargs)
            best[label] = min(best[label], time.perf_counter() - start)
            max_error[label] = float((result - official).abs().max())
    return [
        {
            "case": name,
            "variant": label,
            "best_ms": round(best[label] * 1000, 1),
            "speedup_vs_official": round(best[next(iter(variants))] / best[label], 2),
            "max_abs_difference": max_error[label],
        }
        for label in variants
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each variant's best")
    parser.add_argument("--masks", type=int, default=25, help="masks resized per call")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [row for name in CASES for row in run_case(name, args.masks, args.repeats)]
    print(
        f"{args.masks} masks, threads {torch.get_num_threads()}, best of {args.repeats} rounds; "
        f"default block size {BAND_BLOCK_SIZE}"
    )
    header = f"{'case':26} {'variant':30} {'best ms':>8} {'vs official':>11} {'max diff':>9}"
    print(header)
    print("-" * len(header))
    for row in results:
        print(
            f"{row['case']:26} {row['variant']:30} {row['best_ms']:8.1f} "
            f"{row['speedup_vs_official']:10.2f}x {row['max_abs_difference']:9.1e}"
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
