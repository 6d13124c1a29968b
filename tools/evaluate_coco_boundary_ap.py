#!/usr/bin/env python
"""Score saved COCO instance predictions with mask AP and boundary AP.

Boundary AP (Boundary IoU, Cheng et al. 2021) is the AP^boundary of the Mask2Former paper:
COCO's mask AP with min(mask IoU, boundary IoU) as the IoU, where the boundary IoU compares the
pixels within dilation_ratio x image diagonal of each mask's contour
(:mod:`mask2former.engine.boundary_ap`). It penalises coarse outlines of large objects, which
mask IoU barely sees.

The predictions are a COCO results file: a JSON list of {"image_id", "category_id",
"segmentation" (RLE), "score"}, such as the ``OUTPUT_DIR/inference/coco_instances_results.json``
that ``train_net.py --eval-only`` writes for a COCO-style instance data set. Setting
``TEST.BOUNDARY_AP.ENABLED True`` there reports boundary AP without this tool.

Example:
    python tools/evaluate_coco_boundary_ap.py \\
        --gt-json-file datasets/coco/annotations/instances_val2017.json \\
        --dt-json-file output/inference/coco_instances_results.json

Prints mask and boundary AP side by side, then the figures as JSON.
"""

import argparse
import contextlib
import io
import math
import sys
import warnings
from typing import Any, Dict, List

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from pycocotools.coco import COCO  # noqa: E402

from mask2former.engine.boundary_ap import (  # noqa: E402
    COCO_METRICS,
    DEFAULT_DILATION_RATIO,
    check_dilation_ratio,
    evaluate_mask_ap,
)
from mask2former.utils.figures_io import (  # noqa: E402
    InputError,
    check_output_file,
    read_json_file,
    write_figures,
)


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gt-json-file", required=True, help="COCO instance annotations (instances_*.json)"
    )
    parser.add_argument(
        "--dt-json-file",
        required=True,
        help="COCO results: a JSON list of predictions with RLE segmentations",
    )
    parser.add_argument(
        "--dilation-ratio",
        type=float,
        default=DEFAULT_DILATION_RATIO,
        help="boundary width as a fraction of the image diagonal (default: %(default)s)",
    )
    parser.add_argument(
        "--predicted-images-only",
        action="store_true",
        help="score only the images that have a prediction (default: every annotated image; "
        "objects of an image without predictions count as missed)",
    )
    parser.add_argument("--output", help="also write the JSON figures to this file")
    return parser


def load_inputs(gt_json_file: str, dt_json_file: str):
    """The annotations as a ``COCO`` object and the checked predictions.

    Raises:
        InputError: a file is missing or unreadable, the annotations are not COCO instance
            annotations, or a prediction lacks a field or names an image or category that the
            annotations do not have.
    """
    ground_truth = read_json_file(gt_json_file, "annotation file")
    if not isinstance(ground_truth, dict) or not {"images", "annotations", "categories"} <= set(
        ground_truth
    ):
        raise InputError(
            f"annotation file {gt_json_file!r} is not COCO instance annotations (a JSON object "
            "with 'images', 'annotations' and 'categories')"
        )
    predictions = read_json_file(dt_json_file, "results file")
    if not isinstance(predictions, list):
        raise InputError(
            f"results file {dt_json_file!r} is not a COCO results file (a JSON list of predictions)"
        )
    image_ids = {image["id"] for image in ground_truth["images"]}
    category_ids = {category["id"] for category in ground_truth["categories"]}
    for index, prediction in enumerate(predictions):
        missing = {"image_id", "category_id", "segmentation", "score"} - set(prediction)
        problem = None
        if missing:
            problem = f"lacks {sorted(missing)}"
        elif not isinstance(prediction["segmentation"], dict):
            problem = "has a polygon segmentation; masks are scored as RLE (pycocotools encode)"
        elif prediction["image_id"] not in image_ids:
            problem = f"is for image {prediction['image_id']!r}, which the annotations lack"
        elif prediction["category_id"] not in category_ids:
            problem = (
                f"has category {prediction['category_id']!r}, which the annotations lack (the "
                "results need the annotation file's category ids)"
            )
        if problem:
            raise InputError(
                f"results file {dt_json_file!r}: prediction {index} {problem}; are these the "
                f"predictions for {gt_json_file!r}?"
            )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress lines
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
    return coco_gt, predictions


def evaluate(
    coco_gt: COCO,
    predictions: List[Dict[str, Any]],
    dilation_ratio: float,
    predicted_images_only: bool = False,
) -> Dict[str, Any]:
    """Mask and boundary AP of ``predictions``, with per-class APs, in a JSON-ready dict."""
    img_ids = sorted({p["image_id"] for p in predictions}) if predicted_images_only else None
    class_names = [coco_gt.cats[c]["name"] for c in sorted(coco_gt.getCatIds())]
    figures: Dict[str, Any] = {
        "images": len(img_ids) if img_ids is not None else len(coco_gt.getImgIds()),
        "predictions": len(predictions),
        "dilation_ratio": dilation_ratio,
    }
    for name, ratio in (("segm", None), ("boundary", dilation_ratio)):
        _, figures[name] = evaluate_mask_ap(
            coco_gt,
            predictions,
            boundary_dilation_ratio=ratio,
            img_ids=img_ids,
            class_names=class_names,
        )
    return figures


def format_table(figures: Dict[str, Any]) -> str:
    def cell(value: float) -> str:
        return "nan" if math.isnan(value) else f"{value:.2f}"

    lines = [
        f"{figures['predictions']} predictions on {figures['images']} images; boundary width "
        f"{figures['dilation_ratio']} x image diagonal",
        "| IoU | " + " | ".join(COCO_METRICS) + " |",
        "|---|" + "---|" * len(COCO_METRICS),
    ]
    for name, label in (("segm", "mask"), ("boundary", "boundary")):
        lines.append(
            f"| {label} | " + " | ".join(cell(figures[name][m]) for m in COCO_METRICS) + " |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    try:
        check_dilation_ratio(args.dilation_ratio, "--dilation-ratio")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        check_output_file(args.output)
        coco_gt, predictions = load_inputs(args.gt_json_file, args.dt_json_file)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    figures = evaluate(coco_gt, predictions, args.dilation_ratio, args.predicted_images_only)
    figures.update(gt_json_file=args.gt_json_file, dt_json_file=args.dt_json_file)
    print(format_table(figures))
    print(write_figures(figures, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
