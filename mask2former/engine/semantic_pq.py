"""Panoptic quality of semantic segmentation: PQ^St, as MaskFormer and Mask2Former report it
for semantic models (ADE20K, COCO-Stuff).

A semantic map has no instances, so each class present in an image is one segment, in the
ground truth (its pixels other than the ignore label) and in the prediction alike. Then the
rules of COCO panoptic evaluation (Kirillov et al., "Panoptic Segmentation", 2019) apply:

- a predicted and a ground-truth segment of the same class match when their IoU is above 0.5,
  the union leaving out the predicted pixels on ignored ground truth;
- an unmatched ground-truth segment is a false negative;
- an unmatched predicted segment is a false positive, unless more than half of it lies on
  ignored ground truth;
- per class, PQ = sum of matched IoUs / (TP + FP/2 + FN/2) = SQ x RQ; the figures are the means
  over the classes with any TP, FP or FN.

With one segment per class and image, the matching is per class, so :class:`SemanticPQ` counts
it with a few ``bincount`` calls per image.
"""

import math
from typing import Dict, Optional, Sequence

import numpy as np

__all__ = ["SemanticPQ"]


class SemanticPQ:
    """Accumulates PQ^St over images.

    Args:
        num_classes: K; class ids are 0..K-1.
        ignore_label: the ground-truth value of unlabeled pixels (e.g. 255), or None.
    """

    def __init__(self, num_classes: int, ignore_label: Optional[int] = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.tp = np.zeros(num_classes, np.int64)
        self.fp = np.zeros(num_classes, np.int64)
        self.fn = np.zeros(num_classes, np.int64)
        self.iou = np.zeros(num_classes, np.float64)
        self.images = 0

    def _counts(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(values, minlength=self.num_classes)[: self.num_classes]

    def add(self, ground_truth: np.ndarray, prediction: np.ndarray, where: str = "image") -> None:
        """Count one image.

        Args:
            ground_truth: (H, W) class ids, or ``ignore_label``.
            prediction: (H, W) class ids; a negative value leaves the pixel unpredicted.
            where: the image's name, for error messages.

        Raises:
            ValueError: the shapes differ, or a value is neither a class nor (in the ground
                truth) the ignore label.
        """
        ground_truth, prediction = np.asarray(ground_truth), np.asarray(prediction)
        if ground_truth.shape != prediction.shape or ground_truth.ndim != 2:
            raise ValueError(
                f"{where}: the ground truth is {ground_truth.shape} and the prediction "
                f"{prediction.shape}; both must be the same (H, W)"
            )
        labeled = ground_truth != self.ignore_label if self.ignore_label is not None else True
        labeled = np.broadcast_to(labeled, ground_truth.shape)
        gt = ground_truth[labeled].astype(np.int64)
        if gt.size and (gt.min() < 0 or gt.max() >= self.num_classes):
            wrong = np.unique(gt[(gt < 0) | (gt >= self.num_classes)])[:5].tolist()
            raise ValueError(
                f"{where}: the ground truth holds {wrong}, neither a class (0 to "
                f"{self.num_classes - 1}) nor the ignore label ({self.ignore_label})"
            )
        predicted = prediction >= 0
        if prediction.size and prediction.max() >= self.num_classes:
            wrong = np.unique(prediction[prediction >= self.num_classes])[:5].tolist()
            raise ValueError(
                f"{where}: the prediction holds {wrong}, not classes (0 to {self.num_classes - 1})"
            )
        gt_area = self._counts(gt)
        pred_area = self._counts(prediction[predicted].astype(np.int64))
        pred_on_labeled = prediction[labeled].astype(np.int64)
        intersection = self._counts(gt[pred_on_labeled == gt])
        pred_on_ignored = pred_area - self._counts(pred_on_labeled[pred_on_labeled >= 0])

        union = gt_area + pred_area - intersection - pred_on_ignored
        iou = np.divide(intersection, union, out=np.zeros(self.num_classes), where=union > 0)
        matched = (gt_area > 0) & (pred_area > 0) & (iou > 0.5)
        self.tp += matched
        self.iou += np.where(matched, iou, 0.0)
        self.fn += (gt_area > 0) & ~matched
        mostly_ignored = 2 * pred_on_ignored > pred_area
        self.fp += (pred_area > 0) & ~matched & ~mostly_ignored
        self.images += 1

    def results(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
        """PQ, SQ, RQ (in %) averaged over the classes with any TP, FP or FN, their number
        ``classes``, and ``PQ-<class>`` for each class (NaN for a class never seen)."""
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        seen = (self.tp + self.fp + self.fn) > 0
        denominator = self.tp + 0.5 * self.fp + 0.5 * self.fn
        pq = np.divide(self.iou, denominator, out=np.zeros(self.num_classes), where=seen)
        sq = np.divide(self.iou, self.tp, out=np.zeros(self.num_classes), where=self.tp > 0)
        rq = np.divide(self.tp, denominator, out=np.zeros(self.num_classes), where=seen)
        count = int(seen.sum())
        results = {
            name: float(100 * values[seen].mean()) if count else math.nan
            for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq))
        }
        results["classes"] = count
        names = (
            class_names if class_names is not None else [str(k) for k in range(self.num_classes)]
        )
        for k, name in enumerate(names):
            results[f"PQ-{name}"] = float(100 * pq[k]) if seen[k] else math.nan
        return results
