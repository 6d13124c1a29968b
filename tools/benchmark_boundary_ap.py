"""Benchmark the cost of boundary AP next to COCO mask AP, on synthetic COCO-like results.

Makes ``--images`` 480x640 images with ``--objects`` ellipses each (areas from small to
large, 10 categories) and 100 detections per image, as Mask2Former's instance output keeps
(``TEST.DETECTIONS_PER_IMAGE``): each object detected several times with its outline moved
by a few pixels, the rest false positives. Then times, on the same results (stdout of
pycocotools silenced):

- ``mask``: Detectron2's ``COCOeval_opt`` on masks (what ``COCOEvaluator`` runs);
- ``boundary``: ``BoundaryCOCOeval`` (``TEST.BOUNDARY_AP.ENABLED``), boundary regions only
  for the pairs that can match;
- ``boundary-all-pairs``: the same with a boundary IoU for every pair (the Boundary IoU API's
  way), which gives the same AP.

Each variant runs ``--repeats`` times in turn; the median is reported, with the seconds it
would take on COCO val2017's 5000 images at the same rate.

Prints a table and, at the end, the results as JSON.

Usage:
    python tools/benchmark_boundary_ap.py [--images 100] [--objects 7] [--repeats 3]
"""

import argparse
import contextlib
import io
import json
import statistics
import time
import warnings
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_utils

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from detectron2.evaluation.fast_eval_api import COCOeval_opt  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from mask2former.engine.boundary_ap import BoundaryCOCOeval  # noqa: E402

HEIGHT, WIDTH = 480, 640
DETECTIONS_PER_IMAGE = 100
NUM_CATEGORIES = 10
COCO_VAL_IMAGES = 5000


def _ellipse(center, axes, angle) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    cv2.ellipse(mask, center, axes, angle, 0, 360, 1, thickness=-1)
    return mask


def _rle(mask: np.ndarray) -> Dict:
    return mask_utils.encode(np.asfortranarray(mask, np.uint8))


def _random_ellipse(rng) -> Tuple[Tuple[int, int], Tuple[int, int], int]:
    # half-axes from 4 to 150 pixels, log-uniform: COCO's small, medium and large
    axes = tuple(int(a) for a in np.exp(rng.uniform(np.log(4), np.log(150), 2)))
    center = (int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT)))
    return center, axes, int(rng.integers(0, 180))


def make_scene(num_images: int, objects_per_image: int, seed: int = 0) -> Tuple[COCO, List]:
    """COCO ground truth and COCO-format results (RLE masks, scores)."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "height": HEIGHT, "width": WIDTH})
        for _ in range(objects_per_image):
            center, axes, angle = _random_ellipse(rng)
            mask = _ellipse(center, axes, angle)
            if not mask.any():
                continue
            category = int(rng.integers(1, NUM_CATEGORIES + 1))
            rle = _rle(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
            for _ in range(int(rng.integers(3, 8))):  # outlines moved by up to 5 pixels
                moved_axes = tuple(max(1, a + int(rng.integers(-5, 6))) for a in axes)
                moved_center = tuple(c + int(rng.integers(-3, 4)) for c in center)
                detected = _ellipse(moved_center, moved_axes, angle + int(rng.integers(-5, 6)))
                results.append((image_id, category, detected, float(rng.uniform(0.3, 1.0))))
        own = [r for r in results if r[0] == image_id]
        while len(own) < DETECTIONS_PER_IMAGE:  # false positives, low scores
            false_positive = (
                image_id,
                int(rng.integers(1, NUM_CATEGORIES + 1)),
                _ellipse(*_random_ellipse(rng)),
                float(rng.uniform(0.0, 0.5)),
            )
            own.append(false_positive)
            results.append(false_positive)
    coco_gt = COCO()
    coco_gt.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}"} for c in range(1, NUM_CATEGORIES + 1)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    coco_results = [
        {"image_id": i, "category_id": c, "segmentation": _rle(m), "score": s}
        for i, c, m, s in results
    ]
    return coco_gt, coco_results


def run(variant: str, coco_gt: COCO, coco_results: List[Dict]) -> Tuple[float, float]:
    """Seconds to evaluate and accumulate, and the AP (%)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in coco_results])
        start = time.perf_counter()
        if variant == "mask":
            coco_eval = COCOeval_opt(coco_gt, coco_dt, "segm")
        else:
            coco_eval = BoundaryCOCOeval(
                coco_gt, coco_dt, all_pairs=variant == "boundary-all-pairs"
            )
        coco_eval.evaluate()
        coco_eval.accumulate()
        seconds = time.perf_counter() - start
        coco_eval.summarize()
    return seconds, float(coco_eval.stats[0] * 100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--objects", type=int, default=7, help="objects per image")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.images < 1 or args.objects < 1 or args.repeats < 1:
        parser.error("--images, --objects and --repeats must be at least 1")
    coco_gt, coco_results = make_scene(args.images, args.objects)
    variants = ("mask", "boundary", "boundary-all-pairs")
    times: Dict[str, List[float]] = {v: [] for v in variants}
    aps: Dict[str, float] = {}
    for _ in range(args.repeats):
        for variant in variants:
            seconds, aps[variant] = run(variant, coco_gt, coco_results)
            times[variant].append(seconds)
    rows = []
    for variant in variants:
        median = statistics.median(times[variant])
        rows.append(
            {
                "variant": variant,
                "median_s": median,
                "ms_per_image": 1000 * median / args.images,
                "coco_val_s": median / args.images * COCO_VAL_IMAGES,
                "vs_mask": median / statistics.median(times["mask"]),
                "AP": aps[variant],
                "times_s": times[variant],
            }
        )
    report = {
        "images": args.images,
        "objects": len(coco_gt.anns),
        "detections": len(coco_results),
        "repeats": args.repeats,
        "rows": rows,
    }
    print(
        f"{args.images} images of {HEIGHT}x{WIDTH}, {len(coco_gt.anns)} objects, "
        f"{len(coco_results)} detections; median of {args.repeats}"
    )
    print(f"{'variant':20} {'s':>7} {'ms/image':>9} {'COCO val s':>11} {'x mask':>7} {'AP':>6}")
    for row in rows:
        print(
            f"{row['variant']:20} {row['median_s']:7.2f} {row['ms_per_image']:9.1f} "
            f"{row['coco_val_s']:11.0f} {row['vs_mask']:7.2f} {row['AP']:6.2f}"
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
