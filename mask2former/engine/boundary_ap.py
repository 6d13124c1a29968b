"""Boundary AP: COCO's mask AP scored with Boundary IoU (Cheng et al., "Boundary IoU:
Improving Object-Centric Image Segmentation Evaluation", CVPR 2021).

Mask IoU barely moves when a large object's outline is wrong, since its interior dominates both
the intersection and the union. Boundary IoU compares only the pixels within ``d`` of each
mask's contour: the *boundary region* of a mask is the mask minus its erosion by a
``(2d + 1) x (2d + 1)`` square, with everything outside the image counted as background (so a
mask cut by the image border has a boundary along it). ``d`` is ``dilation_ratio`` times the
image diagonal, rounded, and at least one pixel: 16 pixels on a 640x480 COCO image at the
standard ratio 0.02.

Boundary AP is COCO's mask AP with the IoU of each detection and non-crowd object replaced by
``min(mask IoU, boundary IoU)``; crowd regions keep COCO's crowd IoU. These are the definitions
of the Boundary IoU API, whose figures the Mask2Former paper reports as AP^boundary (COCO
instance segmentation).

Two ways to get it:

- ``TEST.BOUNDARY_AP.ENABLED True`` adds a "boundary" entry (AP, AP50, AP75, APs, APm, APl and
  per-class AP, like "segm") to the results of every COCO-style instance evaluation
  (``train_net.py --eval-only`` and the evaluations during training);
- ``tools/evaluate_coco_boundary_ap.py`` scores a saved ``coco_instances_results.json``.
"""

import logging
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_utils
from detectron2.evaluation.fast_eval_api import COCOeval_opt

__all__ = [
    "BoundaryCOCOeval",
    "boundary_width",
    "check_dilation_ratio",
    "evaluate_mask_ap",
    "mask_boundary",
    "pairs_to_score",
    "summarize_coco_eval",
]

logger = logging.getLogger(__name__)

# The Boundary IoU paper's ratio, used for COCO, LVIS and Cityscapes alike.
DEFAULT_DILATION_RATIO = 0.02

# COCOeval.stats[:6] for segmentation, under Detectron2's metric names.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def check_dilation_ratio(dilation_ratio: float, name: str = "dilation_ratio") -> None:
    """Raises ValueError, naming the setting ``name``, unless ``dilation_ratio`` > 0."""
    if not dilation_ratio > 0:  # NaN too
        raise ValueError(f"{name} must be > 0 (0.02 is Boundary IoU's), got {dilation_ratio!r}")


def boundary_width(height: int, width: int, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> int:
    """``d``, the width in pixels of the boundary region of masks in a ``height x width`` image:
    ``dilation_ratio`` times the diagonal, rounded, at least 1."""
    check_dilation_ratio(dilation_ratio)
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def mask_boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of ``mask`` (H, W) within ``width`` pixels of its contour or of the image
    border: the mask minus its erosion by a ``(2 width + 1)`` square, outside the image counted
    as background. Returns a bool array of the mask's shape."""
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim != 2:
        raise ValueError(f"mask_boundary expects one (H, W) mask, got shape {mask.shape}")
    boundary = np.zeros_like(mask)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return boundary
    # Outside the mask's box, within the image or not, everything is background, which is
    # what the erosion takes outside its input: eroding the box alone gives the same result.
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = mask[top:bottom, left:right].astype(np.uint8)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    eroded = cv2.erode(crop, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    boundary[top:bottom, left:right] = crop > eroded
    return boundary


def pairs_to_score(
    coco_eval: COCOeval_opt, image_id: Any, category_id: Any
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """The ground truths and detections whose IoUs ``computeIoU(image_id, category_id)`` of
    a ``COCOeval`` subclass computes, as COCOeval selects them: of that category (of all with
    ``useCats`` off), the detections by decreasing score (stable), at most ``maxDets[-1]``.

    Returns:
        (ground truths, detections), annotation dicts.
    """
    params = coco_eval.params
    category_ids = [category_id] if params.useCats else params.catIds
    gt = [g for c in category_ids for g in coco_eval._gts[image_id, c]]
    dt = [d for c in category_ids for d in coco_eval._dts[image_id, c]]
    order = np.argsort([-d["score"] for d in dt], kind="mergesort")
    return gt, [dt[i] for i in order[: params.maxDets[-1]]]


class BoundaryCOCOeval(COCOeval_opt):
    """COCO segmentation evaluation with ``min(mask IoU, boundary IoU)`` as the IoU of a
    detection and a non-crowd object (Detectron2's fast ``COCOeval_opt`` otherwise).

    Use it as ``COCOeval(coco_gt, coco_dt, "segm")``: ``evaluate()``, ``accumulate()``,
    ``summarize()``; ``stats`` then holds boundary AP and AR.

    Boundary regions are computed once per annotation, and only where they can matter: a pair
    whose mask IoU is below the lowest IoU threshold matches at no threshold, and since the
    boundary IoU can only lower its IoU, it keeps its mask IoU in ``ious``. ``all_pairs=True``
    computes every pair instead (slower; the same AP).
    """

    def __init__(
        self,
        coco_gt,
        coco_dt,
        dilation_ratio: float = DEFAULT_DILATION_RATIO,
        *,
        all_pairs: bool = False,
    ):
        super().__init__(coco_gt, coco_dt, "segm")
        check_dilation_ratio(dilation_ratio)
        self.dilation_ratio = dilation_ratio
        self.all_pairs = all_pairs
        self._boundaries: Dict[Tuple[str, Any], Dict[str, Any]] = {}

    def _boundary(self, kind: str, annotation: Dict[str, Any]) -> Dict[str, Any]:
        """The boundary region of a ground-truth ("gt") or detected ("dt") annotation, whose
        segmentation ``_prepare`` has made an RLE, as an RLE."""
        key = (kind, annotation["id"])
        if key not in self._boundaries:
            rle = annotation["segmentation"]
            height, width = rle["size"]
            boundary = mask_boundary(
                mask_utils.decode(rle), boundary_width(height, width, self.dilation_ratio)
            )
            self._boundaries[key] = mask_utils.encode(np.asfortranarray(boundary, np.uint8))
        return self._boundaries[key]

    def computeIoU(self, imgId, catId):  # noqa: N802 (pycocotools' name)
        gt, dt = pairs_to_score(self, imgId, catId)
        if not gt and not dt:
            return []
        iscrowd = [int(g["iscrowd"]) for g in gt]
        ious = mask_utils.iou(
            [d["segmentation"] for d in dt], [g["segmentation"] for g in gt], iscrowd
        )
        if not gt or not dt:
            return ious
        ious = np.asarray(ious, dtype=np.float64)
        lowest = -math.inf if self.all_pairs else min(self.params.iouThrs)
        for column, g in enumerate(gt):
            if g["iscrowd"]:
                continue
            rows = np.flatnonzero(ious[:, column] >= lowest)
            if rows.size == 0:
                continue
            boundary_ious = mask_utils.iou(
                [self._boundary("dt", dt[row]) for row in rows],
                [self._boundary("gt", g)],
                [0],
            )[:, 0]
            ious[rows, column] = np.minimum(ious[rows, column], boundary_ious)
        return ious


def summarize_coco_eval(
    coco_eval: Optional[COCOeval_opt], class_names: Optional[Sequence[str]] = None
) -> Dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl (in %) of an evaluated, accumulated and summarized
    ``coco_eval``, plus ``AP-<class>`` for each of ``class_names`` (in the order of its
    ``params.catIds``); NaN for each when ``coco_eval`` is None (no detections) and for a class
    without ground truth."""
    if coco_eval is None:
        results = dict.fromkeys(COCO_METRICS, math.nan)
        return {**results, **{f"AP-{name}": math.nan for name in class_names or ()}}
    results = {
        metric: float(value * 100) if value >= 0 else math.nan
        for metric, value in zip(COCO_METRICS, coco_eval.stats)
    }
    if class_names:
        # (IoU thresholds, recall thresholds, classes, area ranges, max detections); -1: no data
        precision = coco_eval.eval["precision"]
        if precision.shape[2] != len(class_names):
            raise ValueError(
                f"{len(class_names)} class names for {precision.shape[2]} evaluated categories"
            )
        for index, name in enumerate(class_names):
            values = precision[:, :, index, 0, -1]
            values = values[values > -1]
            results[f"AP-{name}"] = float(values.mean() * 100) if values.size else math.nan
    return results


def evaluate_mask_ap(
    coco_gt,
    coco_results: Iterable[Dict[str, Any]],
    *,
    boundary_dilation_ratio: Optional[float] = None,
    img_ids: Optional[List[Any]] = None,
    class_names: Optional[Sequence[str]] = None,
) -> Tuple[Optional[COCOeval_opt], Dict[str, float]]:
    """Mask AP, or boundary AP with ``boundary_dilation_ratio``, of COCO-format instance
    results (dicts with ``image_id``, ``category_id`` in the annotation file's ids,
    ``segmentation`` as an RLE and ``score``) against the ``pycocotools.coco.COCO`` object
    ``coco_gt``.

    Args:
        img_ids: the images to score; default every image of ``coco_gt``.
        class_names: names for the per-class APs, one per category of ``coco_gt`` in
            increasing id order; none when not given.

    Returns:
        The evaluated ``COCOeval_opt`` or ``BoundaryCOCOeval`` (None without results) and
        :func:`summarize_coco_eval`'s metrics.
    """
    # Without "bbox", COCO's area ranges (small/medium/large) use the mask area, as in
    # Detectron2's mask evaluation.
    results = [{k: v for k, v in result.items() if k != "bbox"} for result in coco_results]
    kind = "mask" if boundary_dilation_ratio is None else "boundary"
    if not results:
        logger.warning("No instance predictions: %s AP is NaN.", kind)
        return None, summarize_coco_eval(None, class_names)
    coco_dt = coco_gt.loadRes(results)
    if boundary_dilation_ratio is None:
        coco_eval = COCOeval_opt(coco_gt, coco_dt, "segm")
    else:
        coco_eval = BoundaryCOCOeval(coco_gt, coco_dt, boundary_dilation_ratio)
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval, summarize_coco_eval(coco_eval, class_names)
