"""Result structures returned by :class:`mask2former.Predictor`, one per task.

Shapes: H, W: the size of the image as given (before the test-time resize); N: number of
instances; K: number of classes of the model.
All arrays are numpy arrays on the CPU.
"""

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "PanopticResult",
    "InstanceResult",
    "SemanticResult",
    "Prediction",
    "prediction_from_model_output",
    "boxes_from_masks",
]


@dataclass
class PanopticResult:
    """Panoptic segmentation of one image.

    Attributes:
        segment_ids: (H, W) int32 map; 0 is "no segment", any other value is the ``id`` of
            an entry in ``segments``.
        segments: one dict per segment, with keys ``id`` (int, as in ``segment_ids``),
            ``category_id`` (int, the model's contiguous class index), ``category_name``
            (str), ``isthing`` (bool), ``score`` (float, or None when the model gives none)
            and ``area`` (int, pixels).
    """

    segment_ids: np.ndarray
    segments: List[Dict[str, Any]]


@dataclass
class InstanceResult:
    """Instance segmentation of one image, sorted by decreasing score.

    Attributes:
        masks: (N, H, W) bool masks.
        boxes: (N, 4) float32 boxes (x0, y0, x1, y1) in pixels, the tight box around each
            mask (Mask2Former predicts no boxes); all zero for an empty mask.
        scores: (N,) float32 confidences in [0, 1].
        classes: (N,) int64 contiguous class indices.
        class_names: N class names, one per instance.
    """

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    class_names: List[str]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def filter(self, score_threshold: float) -> "InstanceResult":
        """The instances whose score is at least ``score_threshold``."""
        keep = np.flatnonzero(self.scores >= score_threshold)
        return InstanceResult(
            masks=self.masks[keep],
            boxes=self.boxes[keep],
            scores=self.scores[keep],
            classes=self.classes[keep],
            class_names=[self.class_names[i] for i in keep],
        )


@dataclass
class SemanticResult:
    """Semantic segmentation of one image.

    Attributes:
        label_map: (H, W) int32 map of class indices (the arg-max over classes).
        class_names: K class names; ``class_names[label_map[y, x]]`` names a pixel.
        probabilities: (K, H, W) float32 per-class scores, or None unless asked for
            (``Predictor(..., return_probabilities=True)``).
    """

    label_map: np.ndarray
    class_names: List[str]
    probabilities: Optional[np.ndarray] = None


@dataclass
class Prediction:
    """Everything the model predicted for one image; a task is None when it is switched
    off in the config (MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON).

    Attributes:
        image_size: (H, W) of the input image.
        panoptic: panoptic segmentation or None.
        instances: instance segmentation or None.
        semantic: semantic segmentation or None.
    """

    image_size: Tuple[int, int]
    panoptic: Optional[PanopticResult] = None
    instances: Optional[InstanceResult] = None
    semantic: Optional[SemanticResult] = None

    def available_tasks(self) -> List[str]:
        """Names of the tasks present, in the order panoptic, instance, semantic."""
        present = [
            ("panoptic", self.panoptic),
            ("instance", self.instances),
            ("semantic", self.semantic),
        ]
        return [name for name, result in present if result is not None]

    def with_instance_threshold(self, score_threshold: float) -> "Prediction":
        """A copy whose instances are filtered by score (other tasks unchanged)."""
        if self.instances is None:
            return self
        return replace(self, instances=self.instances.filter(score_threshold))


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight (x0, y0, x1, y1) boxes around binary masks.

    Args:
        masks: (N, H, W) bool.

    Returns:
        (N, 4) float32; x1/y1 are exclusive (one past the last pixel), an empty mask gives
        zeros.
    """
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    rows_any = masks.any(axis=2)
    cols_any = masks.any(axis=1)
    for index in range(masks.shape[0]):
        rows = np.flatnonzero(rows_any[index])
        cols = np.flatnonzero(cols_any[index])
        if rows.size:
            boxes[index] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def _name(class_names: Sequence[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else f"class {index}"


def _panoptic_result(panoptic_output, class_names: Sequence[str]) -> PanopticResult:
    segment_ids, segments_info = panoptic_output
    segment_ids = segment_ids.to("cpu", torch.int32).numpy()
    areas = np.bincount(segment_ids.ravel(), minlength=1)
    segments = []
    for info in segments_info:
        segment_id = int(info["id"])
        category_id = int(info["category_id"])
        score = info.get("score")
        segments.append(
            {
                "id": segment_id,
                "category_id": category_id,
                "category_name": _name(class_names, category_id),
                "isthing": bool(info.get("isthing", False)),
                "score": None if score is None else float(score),
                "area": int(areas[segment_id]) if segment_id < areas.size else 0,
            }
        )
    return PanopticResult(segment_ids=segment_ids, segments=segments)


def _instance_result(instances, class_names: Sequence[str], score_threshold: float):
    instances = instances.to("cpu")
    scores = instances.scores.float().numpy().astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= score_threshold]
    pred_masks = instances.pred_masks
    masks = (pred_masks > 0.5 if pred_masks.dtype != torch.bool else pred_masks).numpy()
    masks = masks[order]
    classes = instances.pred_classes.to(torch.int64).numpy()[order]
    return InstanceResult(
        masks=masks,
        boxes=boxes_from_masks(masks),
        scores=scores[order],
        classes=classes,
        class_names=[_name(class_names, int(c)) for c in classes],
    )


def _semantic_result(sem_seg, class_names: Sequence[str], keep_probabilities: bool):
    sem_seg = sem_seg.detach().float().cpu()
    return SemanticResult(
        label_map=sem_seg.argmax(dim=0).to(torch.int32).numpy(),
        class_names=list(class_names),
        probabilities=sem_seg.numpy() if keep_probabilities else None,
    )


def prediction_from_model_output(
    output: Dict[str, Any],
    image_size: Tuple[int, int],
    *,
    class_names: Sequence[str],
    score_threshold: float = 0.0,
    keep_probabilities: bool = False,
) -> Prediction:
    """Turn one image's output of the MaskFormer meta-architecture into a :class:`Prediction`.

    Args:
        output: the model's dict for one image, with any of "panoptic_seg"
            ((H, W) int32 ids, segments_info), "instances" (Instances with pred_masks
            (N, H, W), scores, pred_classes) and "sem_seg" ((K, H, W) scores).
        image_size: (H, W) of the image.
        class_names: K names, indexed by the model's contiguous class index.
        score_threshold: instances scoring below it are dropped.
        keep_probabilities: keep the (K, H, W) semantic scores in the result.
    """
    return Prediction(
        image_size=(int(image_size[0]), int(image_size[1])),
        panoptic=(
            _panoptic_result(output["panoptic_seg"], class_names)
            if "panoptic_seg" in output
            else None
        ),
        instances=(
            _instance_result(output["instances"], class_names, score_threshold)
            if "instances" in output
            else None
        ),
        semantic=(
            _semantic_result(output["sem_seg"], class_names, keep_probabilities)
            if "sem_seg" in output
            else None
        ),
    )
