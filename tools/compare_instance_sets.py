#!/usr/bin/env python
"""Compare the instance outputs of two inference reports as sets, whatever their order.

The side-by-side run on the GPU machine (``.gpu/side_by_side.sh infer``) saves each
implementation's outputs (``torch.save`` of a dict whose "outputs" is a list, one dict per
image, with "scores", "pred_classes" and "pred_masks") and compares instances index by index.
The official release takes its top-k pairs with ``topk(sorted=False)``, whose order on CUDA is
not by score; ours are sorted by class probability. So the same instances in another order
fail that comparison. This tool matches each instance of the first report to one of the second
(Hungarian assignment on mask IoU, among pairs of the same class whose scores differ by at most
``--score-tolerance``) and reports, per image, how many matched and their smallest mask IoU.

Prints one JSON line per image and a verdict; exits 1 when an instance is left unmatched or a
matched pair's mask IoU is under ``--min-iou``.

Example (on the GPU machine, after ``bash .gpu/side_by_side.sh infer``):
    python tools/compare_instance_sets.py /tmp/sbs_off.pt /tmp/sbs_pro.pt
"""

import argparse
import json
import sys
from typing import Dict, List

import torch
from scipy.optimize import linear_sum_assignment


def compare_image(first: Dict, second: Dict, score_tolerance: float) -> Dict:
    """Match the instances of two outputs of one image; returns the counts and IoUs."""
    scores_a, scores_b = first["scores"].double(), second["scores"].double()
    masks_a = first["pred_masks"].flatten(1).double()
    masks_b = second["pred_masks"].flatten(1).double()
    intersection = masks_a @ masks_b.T
    union = masks_a.sum(1)[:, None] + masks_b.sum(1)[None, :] - intersection
    iou = torch.where(union > 0, intersection / union.clamp(min=1), 1.0)
    same_class = first["pred_classes"][:, None] == second["pred_classes"][None, :]
    allowed = same_class & ((scores_a[:, None] - scores_b[None, :]).abs() <= score_tolerance)
    # a disallowed pair costs more than any allowed one can gain
    cost = torch.where(allowed, -iou, torch.full_like(iou, 2.0))
    rows, cols = (torch.as_tensor(index, dtype=torch.long) for index in linear_sum_assignment(cost))
    matched = allowed[rows, cols]
    matched_iou = iou[rows, cols][matched]
    return {
        "instances": [len(scores_a), len(scores_b)],
        "matched": int(matched.sum()),
        "same_order": bool(len(scores_a) == len(scores_b) == len(rows) and (cols == rows).all()),
        "min_iou": float(matched_iou.min()) if len(matched_iou) else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first", help="report of one implementation (torch.save file)")
    parser.add_argument("second", help="report of the other")
    parser.add_argument("--score-tolerance", type=float, default=1e-4)
    parser.add_argument("--min-iou", type=float, default=0.99)
    args = parser.parse_args(argv)
    reports = [
        torch.load(path, map_location="cpu", weights_only=False)
        for path in (args.first, args.second)
    ]
    results: List[Dict] = []
    for image, (first, second) in enumerate(zip(*(report["outputs"] for report in reports))):
        if "scores" not in first or "scores" not in second:
            continue
        result = {"image": image, **compare_image(first, second, args.score_tolerance)}
        print(json.dumps(result))
        results.append(result)
    bad = [
        result
        for result in results
        if result["matched"] != max(result["instances"])
        or (result["min_iou"] is not None and result["min_iou"] < args.min_iou)
    ]
    print(
        f"{'FAIL' if bad else 'OK'}: {len(results)} images, "
        f"{sum(result['matched'] for result in results)} instances matched"
        + (f", {len(bad)} images short" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
