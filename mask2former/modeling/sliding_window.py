"""Sliding-window inference: where the windows go on an image, and how instances seen in
several windows become one.

An image too large for one forward (aerial, medical or document images of several thousand
pixels a side) is segmented in overlapping windows of a fixed size
(``MaskFormer.sliding_window_inference``). Semantic scores are added into a canvas of the
image's size and every pixel is divided by the number of windows that covered it. Instances
are predicted per window and merged across windows (:func:`merge_window_instances`): an object
seen whole in one window and cut by the border of another is one instance. The panoptic output
is made from those two, things from the instances and stuff from the semantic scores, as
Panoptic FPN combines its heads (:func:`combine_panoptic`): Mask2Former's own panoptic
inference needs all queries' masks of the whole image at once, which windows do not have.
"""

from dataclasses import dataclass
from typing import Collection, Dict, FrozenSet, List, Sequence, Tuple

import torch
from detectron2.structures import Boxes, Instances
from torch import Tensor

__all__ = [
    "SlidingWindow",
    "combine_panoptic",
    "WindowInstance",
    "merge_window_instances",
    "paste_instances",
    "window_instances",
    "window_starts",
]


def window_starts(length: int, window: int, stride: int) -> List[int]:
    """Offsets of the windows along one side: every ``stride`` pixels, the last one moved back
    so that it ends at the border; one window at 0 when the side is not longer than a window.

    Args:
        length: the image side, in pixels.
        window: the window side (> 0).
        stride: the step between windows (> 0, at most ``window``, so that no pixel is missed).
    """
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


@dataclass(frozen=True)
class SlidingWindow:
    """Window size and stride, (height, width) in pixels of the model's input (after the
    test-time resize), how many windows one forward runs, the overlap (intersection over the
    smaller mask) at which instances of one class from different windows are merged, and how
    the panoptic output combines things and stuff (:func:`combine_panoptic`)."""

    size: Tuple[int, int]
    stride: Tuple[int, int]
    windows_per_pass: int = 1
    merge_threshold: float = 0.5
    # the panoptic output's combination of things and stuff (MODEL.PANOPTIC_FPN.COMBINE.*)
    panoptic_instance_threshold: float = 0.5
    panoptic_overlap_threshold: float = 0.5
    panoptic_stuff_area: int = 4096

    @classmethod
    def from_values(
        cls,
        size: Sequence[int],
        stride: Sequence[int],
        windows_per_pass: int,
        merge_threshold: float = 0.5,
        where: str = "",
        **panoptic,
    ) -> "SlidingWindow":
        """Checked settings; ``where`` (a config key prefix) names them in the ValueError;
        ``panoptic``: the ``panoptic_*`` fields."""
        prefix = f"{where}." if where else ""

        def pair(value: Sequence[int], name: str) -> Tuple[int, int]:
            values = tuple(value)
            if len(values) != 2 or not all(isinstance(v, int) and v > 0 for v in values):
                raise ValueError(
                    f"{prefix}{name} must be two positive integers (height, width), got "
                    f"{list(values)}."
                )
            return values

        size_pair, stride_pair = pair(size, "SIZE"), pair(stride, "STRIDE")
        if any(s > w for s, w in zip(stride_pair, size_pair)):
            raise ValueError(
                f"{prefix}STRIDE {list(stride_pair)} is larger than {prefix}SIZE "
                f"{list(size_pair)}: pixels between the windows would get no prediction. Use a "
                "stride at most the window size (about 2/3 of it is usual)."
            )
        if not (isinstance(windows_per_pass, int) and windows_per_pass >= 1):
            raise ValueError(
                f"{prefix}WINDOWS_PER_PASS must be an integer >= 1, got {windows_per_pass!r}."
            )
        if not 0.0 < merge_threshold <= 1.0:
            raise ValueError(f"{prefix}MERGE_THRESHOLD must be in (0, 1], got {merge_threshold!r}.")
        return cls(size_pair, stride_pair, windows_per_pass, float(merge_threshold), **panoptic)

    def boxes(self, height: int, width: int) -> List[Tuple[int, int, int, int]]:
        """The windows (top, left, bottom, right) covering a ``height`` x ``width`` image, row
        by row; all of the same size, the window size clipped to the image."""
        window_h, window_w = min(self.size[0], height), min(self.size[1], width)
        return [
            (top, left, top + window_h, left + window_w)
            for top in window_starts(height, window_h, self.stride[0])
            for left in window_starts(width, window_w, self.stride[1])
        ]


@dataclass
class WindowInstance:
    """An instance predicted in one window, in image coordinates.

    Attributes:
        score: its score (class probability times mask score).
        label: its class.
        box: (x0, y0, x1, y1) of its mask in the image, x1 and y1 exclusive; all 0 when empty.
        mask: (y1 - y0, x1 - x0) bool, the mask inside its box.
        windows: the windows it was seen in (one, until merged).
        area: pixels in the mask (default: counted).
    """

    score: float
    label: int
    box: Tuple[int, int, int, int]
    mask: Tensor
    windows: FrozenSet[int]
    area: int = -1

    def __post_init__(self):
        if self.area < 0:
            self.area = int(self.mask.sum())


def window_instances(instances, offset: Tuple[int, int], window: int) -> List[WindowInstance]:
    """One window's ``Instances`` (pred_masks, pred_boxes, scores, pred_classes) as
    :class:`WindowInstance` in image coordinates; ``offset`` is the window's (top, left)."""
    top, left = offset
    boxes = instances.pred_boxes.tensor.to(torch.int64).tolist()
    scores = instances.scores.tolist()
    labels = instances.pred_classes.tolist()
    result = []
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        # a copy: a view would keep the window's (topk, h, w) masks alive until the merge
        mask = instances.pred_masks[index, y0:y1, x0:x1].clone()
        box = (x0 + left, y0 + top, x1 + left, y1 + top) if x1 > x0 else (0, 0, 0, 0)
        result.append(WindowInstance(scores[index], labels[index], box, mask, frozenset([window])))
    return result


def _intersection(a: WindowInstance, b: WindowInstance) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the boxes' intersection; empty (x1 <= x0 or y1 <= y0) when none."""
    return (
        max(a.box[0], b.box[0]),
        max(a.box[1], b.box[1]),
        min(a.box[2], b.box[2]),
        min(a.box[3], b.box[3]),
    )


def _box_overlap(a: WindowInstance, b: WindowInstance) -> int:
    """Pixels in both boxes."""
    x0, y0, x1, y1 = _intersection(a, b)
    return max(x1 - x0, 0) * max(y1 - y0, 0)


def _overlap(a: WindowInstance, b: WindowInstance) -> int:
    """Pixels in both masks."""
    x0, y0, x1, y1 = _intersection(a, b)
    if x1 <= x0 or y1 <= y0:
        return 0

    def crop(item: WindowInstance) -> Tensor:
        bx, by = item.box[0], item.box[1]
        return item.mask[y0 - by : y1 - by, x0 - bx : x1 - bx]

    return int((crop(a) & crop(b)).sum())


def _union(a: WindowInstance, b: WindowInstance) -> WindowInstance:
    """``a`` (the higher score) with ``b``'s mask added."""
    box = (min(a.box[0], b.box[0]), min(a.box[1], b.box[1]))
    box = box + (max(a.box[2], b.box[2]), max(a.box[3], b.box[3]))
    mask = a.mask.new_zeros((box[3] - box[1], box[2] - box[0]))
    for item in (a, b):
        x, y = item.box[0] - box[0], item.box[1] - box[1]
        height, width = item.mask.shape
        mask[y : y + height, x : x + width] |= item.mask
    return WindowInstance(a.score, a.label, box, mask, a.windows | b.windows)


def merge_window_instances(
    candidates: Sequence[WindowInstance], match_threshold: float
) -> List[WindowInstance]:
    """Merge the predictions of one object made in several overlapping windows.

    In order of decreasing score, an instance is merged into an earlier (higher-scoring) one of
    its class seen only in other windows when their masks' intersection covers at least
    ``match_threshold`` of the smaller mask (intersection over the smaller area, so that the
    part of an object that a window cut off matches the whole object seen by another window);
    the merged mask is the union and keeps the higher score. Instances of one window are never
    merged with each other, so a single window gives its own predictions unchanged.

    Returns:
        the instances after merging, by decreasing score.
    """
    kept: List[WindowInstance] = []
    kept_of_label: Dict[int, List[int]] = {}
    for candidate in sorted(candidates, key=lambda item: -item.score):
        best, best_ratio = None, match_threshold
        for index in kept_of_label.get(candidate.label, []) if candidate.area > 0 else []:
            other = kept[index]
            smaller = min(candidate.area, other.area)
            # the boxes' intersection bounds the masks': skip the pairs it rules out
            if other.windows & candidate.windows or _box_overlap(candidate, other) < (
                best_ratio * smaller
            ):
                continue
            ratio = _overlap(candidate, other) / smaller
            if ratio >= best_ratio:
                best, best_ratio = index, ratio
        if best is None:
            kept_of_label.setdefault(candidate.label, []).append(len(kept))
            kept.append(candidate)
        else:
            kept[best] = _union(kept[best], candidate)
    return kept


def paste_instances(
    instances: Sequence[WindowInstance], image_size: Tuple[int, int], device: torch.device
) -> Instances:
    """Detectron2 ``Instances`` of ``image_size`` with full-size pred_masks, pred_boxes, scores
    and pred_classes, in the given order."""
    height, width = image_size
    result = Instances(image_size)
    masks = torch.zeros((len(instances), height, width), dtype=torch.bool, device=device)
    for index, item in enumerate(instances):
        x0, y0, x1, y1 = item.box
        masks[index, y0:y1, x0:x1] = item.mask
    result.pred_masks = masks
    boxes = [list(item.box) for item in instances]
    result.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32, device=device).view(-1, 4))
    result.scores = torch.tensor([item.score for item in instances], device=device)
    labels = [item.label for item in instances]
    result.pred_classes = torch.tensor(labels, dtype=torch.int64, device=device)
    return result


def combine_panoptic(
    instances: Sequence[WindowInstance],
    semantic_scores: Tensor,
    *,
    thing_classes: Collection[int],
    instance_score_threshold: float,
    overlap_threshold: float,
    stuff_area_limit: int,
) -> Tuple[Tensor, List[Dict]]:
    """A panoptic segmentation from stitched instances and semantic scores, as Panoptic FPN
    combines its two heads (Kirillov et al., 2019).

    Things: the instances of thing classes scoring at least ``instance_score_threshold``, in
    order of decreasing score, each taking the pixels of its mask that no earlier one took,
    unless more than ``overlap_threshold`` of its mask is taken already. Stuff: for every stuff
    class, the pixels of the semantic arg-max of that class that no thing took, when they are
    at least ``stuff_area_limit``.

    Args:
        instances: merged window instances, by decreasing score.
        semantic_scores: (K, H, W) per-class scores of the whole image.
        thing_classes: the contiguous ids of the thing classes.
        instance_score_threshold, overlap_threshold, stuff_area_limit: see above
            (``MODEL.PANOPTIC_FPN.COMBINE.*``).

    Returns:
        panoptic_seg: (H, W) int32 segment ids, 0 = void.
        segments_info: one dict per segment with "id", "isthing", "category_id" and "area".
    """
    height, width = semantic_scores.shape[-2:]
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=semantic_scores.device)
    segments_info: List[Dict] = []
    for item in instances:
        if item.score < instance_score_threshold or item.area == 0:
            continue
        if item.label not in thing_classes:
            continue
        x0, y0, x1, y1 = item.box
        region = panoptic_seg[y0:y1, x0:x1]
        free = item.mask.to(region.device) & (region == 0)
        area = int(free.sum())
        # the rest of its mask is taken by earlier things
        if (item.area - area) / item.area > overlap_threshold or area == 0:
            continue
        segment_id = len(segments_info) + 1
        region[free] = segment_id
        segments_info.append(
            {"id": segment_id, "isthing": True, "category_id": item.label, "area": area}
        )
    labels = semantic_scores.argmax(0)
    unassigned = panoptic_seg == 0
    for category in torch.unique(labels).tolist():
        if category in thing_classes:
            continue
        region = (labels == category) & unassigned
        area = int(region.sum())
        if area < stuff_area_limit or area == 0:
            continue
        segment_id = len(segments_info) + 1
        panoptic_seg[region] = segment_id
        segments_info.append(
            {"id": segment_id, "isthing": False, "category_id": category, "area": area}
        )
    return panoptic_seg, segments_info
