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
    "TASKS",
    "TASK_CONFIG_KEYS",
    "PanopticResult",
    "InstanceResult",
    "SemanticResult",
    "Prediction",
    "prediction_from_model_output",
]

# The tasks a Prediction holds, in the order the demo prefers them, and the config switch of
# each (MODEL.MASK_FORMER.TEST.<key>).
TASK_CONFIG_KEYS: Dict[str, str] = {
    "panoptic": "PANOPTIC_ON",
    "instance": "INSTANCE_ON",
    "semantic": "SEMANTIC_ON",
}
TASKS: Tuple[str, ...] = tuple(TASK_CONFIG_KEYS)


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
        results = {"panoptic": self.panoptic, "instance": self.instances, "semantic": self.semantic}
        return [task for task in TASKS if results[task] is not None]

    def with_instance_threshold(self, score_threshold: float) -> "Prediction":
        """A copy whose instances are filtered by score (other tasks unchanged)."""
        if self.instances is None:
            return self
        return replace(self, instances=self.instances.filter(score_threshold))


def _name(class_names: Sequence[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else f"class {index}"


def _panoptic_result(panoptic_output, class_names: Sequence[str]) -> PanopticResult:
    segment_ids, segments_info = panoptic_output
    segments = [
        {
            "id": int(info["id"]),
            "category_id": int(info["category_id"]),
            "category_name": _name(class_names, int(info["category_id"])),
            "isthing": bool(info["isthing"]),
            "score": None if info.get("score") is None else float(info["score"]),
            "area": int(info["area"]),
        }
        for info in segments_info
    ]
    return PanopticResult(segment_ids=segment_ids.to("cpu", torch.int32).numpy(), segments=segments)


def _instance_result(instances, class_names: Sequence[str], score_threshold: float):
    if instances.pred_masks.dtype != torch.bool:
        raise TypeError(
            f"instances.pred_masks must be binary (bool) masks, got {instances.pred_masks.dtype}: "
            "the model binarises them at MODEL.MASK_FORMER.TEST.MASK_THRESHOLD."
        )
    instances = instances.to("cpu")
    scores = instances.scores.float().numpy()
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= score_threshold]
    classes = instances.pred_classes.to(torch.int64).numpy()[order]
    return InstanceResult(
        masks=instances.pred_masks.numpy()[order],
        boxes=instances.pred_boxes.tensor.float().numpy()[order],
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
            ((H, W) int32 ids, segments_info with "id", "category_id", "isthing", "area"),
            "instances" (Instances with pred_masks (N, H, W) bool, pred_boxes, scores,
            pred_classes) and "sem_seg" ((K, H, W) scores).
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
