"""Turning one image's mask-classification output into semantic, panoptic and instance results.

Pure functions. The network predicts masks at 1/4 of the padded input; the official release
upsamples all of them to the padded size, crops the valid image region and resizes that to the
original image size (detectron2's ``sem_seg_postprocess``), then applies the sigmoid again for
each output. Here the two bilinear resizes are composed into one separable linear map (the same
weights, applied as banded matrix products, with no padded-size intermediate); the caller resizes
once, takes the sigmoid once and shares the probabilities between the outputs, and can restrict
both to the queries the enabled outputs read (see ``panoptic_queries``, ``instance_queries``).

Every function computes in float32 with autocast off, whatever the caller's autocast state and
input dtypes: mask probabilities are compared with thresholds, and bfloat16 products would
move pixels across them.

Shape legend:
    Q: queries, K: classes (without "no object"), H, W: output size, h, w: predicted mask size.
"""

import functools
from typing import Callable, Collection, Dict, List, Optional, Tuple, TypeVar

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances
from torch import Tensor

_Function = TypeVar("_Function", bound=Callable)

__all__ = [
    "BAND_BLOCK_SIZE",
    "resize_mask_logits",
    "semantic_inference",
    "panoptic_queries",
    "panoptic_inference",
    "instance_queries",
    "top_class_pairs",
    "instance_inference",
    "mask_boxes",
]


def _float32(function: _Function) -> _Function:
    """Run ``function`` with autocast off on the device of its first (tensor) argument and its
    tensor arguments in float32."""

    def as_float32(value):
        return value.float() if isinstance(value, Tensor) and value.is_floating_point() else value

    @functools.wraps(function)
    def wrapper(first: Tensor, *args, **kwargs):
        with torch.autocast(first.device.type, enabled=False):
            return function(
                as_float32(first),
                *(as_float32(arg) for arg in args),
                **{name: as_float32(value) for name, value in kwargs.items()},
            )

    return wrapper  # type: ignore[return-value]


def _resampling_matrix(
    in_size: int, padded_size: int, valid_size: int, out_size: int, device: torch.device
) -> Tensor:
    """1-D linear map of "bilinear upsample to padded_size, crop valid_size, resize to out_size".

    Built by pushing unit impulses through ``F.interpolate``, so the weights are exactly those
    of the two-step resize.

    Returns:
        (out_size, in_size) float32 matrix.
    """
    impulses = torch.eye(in_size, device=device)[None, None]
    upsampled = F.interpolate(
        impulses, size=(padded_size, in_size), mode="bilinear", align_corners=False
    )
    cropped = upsampled[:, :, :valid_size]
    resized = F.interpolate(cropped, size=(out_size, in_size), mode="bilinear", align_corners=False)
    return resized[0, 0]


# Output positions per block of a banded matrix product (see _apply_banded). Each block reads
# only the input span its weights cover: small blocks make many small products (call
# overhead), large blocks read wide spans whose weights are mostly zero. 32 is among the
# fastest at COCO, ADE20K and Cityscapes sizes on a CPU (BENCHMARKS.md, "Mask resizing").
BAND_BLOCK_SIZE = 32


@_float32
def resize_mask_logits(
    mask_logits: Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    *,
    fused: bool = True,
    block_size: int = BAND_BLOCK_SIZE,
) -> Tensor:
    """Resize predicted masks to the output size as the official release does.

    The official computation (``fused=False``): bilinearly upsample ``mask_logits`` to
    ``padded_size``, keep the top-left ``image_size`` region and bilinearly resize it to
    ``output_size``. The fused one (default) applies the same weights as one separable linear
    map, two banded matrix products, without the padded-size intermediate; equal up to float
    rounding and faster (BENCHMARKS.md, "Mask resizing").

    Args:
        mask_logits: (Q, h, w) mask logits of one image.
        padded_size: (height, width) of the padded network input.
        image_size: (height, width) of the image inside the padded input.
        output_size: (height, width) to return.
        fused: the one-pass banded products (True) or the official two interpolations.
        block_size: output positions per block of the banded products.

    Returns:
        (Q, H, W) resized mask logits.
    """
    if not fused:
        upsampled = F.interpolate(
            mask_logits[None], size=padded_size, mode="bilinear", align_corners=False
        )
        cropped = upsampled[:, :, : image_size[0], : image_size[1]]
        return F.interpolate(cropped, size=output_size, mode="bilinear", align_corners=False)[0]
    in_h, in_w = mask_logits.shape[-2:]
    rows = _resampling_matrix(
        in_h, padded_size[0], image_size[0], output_size[0], mask_logits.device
    )
    cols = _resampling_matrix(
        in_w, padded_size[1], image_size[1], output_size[1], mask_logits.device
    )
    if _columns_first(in_h, in_w, *output_size):
        return _apply_banded(rows, _apply_banded(cols, mask_logits, -1, block_size), -2, block_size)
    return _apply_banded(cols, _apply_banded(rows, mask_logits, -2, block_size), -1, block_size)


def _columns_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Whether to resize the width first, then the height (else the other way round).

    Either order is two matrix products per mask. A heuristic: compare their multiply-adds
    as dense products, ``in_h * in_w * out_w + out_h * in_h * out_w`` for width first against
    ``out_h * in_h * in_w + out_h * in_w * out_w`` for height first; both results are the
    same map up to float rounding.
    """
    return in_h * in_w * out_w + out_h * in_h * out_w <= out_h * in_h * in_w + out_h * in_w * out_w


def _apply_banded(matrix: Tensor, masks: Tensor, dim: int, block_size: int) -> Tensor:
    """Apply a banded (out, in) matrix along ``dim`` (-1 or -2) of ``masks``.

    Each block of ``block_size`` output positions reads only the input span its weights cover,
    so the work is a few small matrix products instead of one mostly-zero dense one.
    """
    nonzero = matrix != 0
    positions = torch.arange(matrix.shape[1], device=matrix.device)
    first = torch.where(nonzero, positions, matrix.shape[1]).min(1).values.tolist()
    last = torch.where(nonzero, positions, -1).max(1).values.tolist()
    pieces = []
    for start in range(0, matrix.shape[0], block_size):
        end = min(start + block_size, matrix.shape[0])
        low, high = min(first[start:end]), max(last[start:end]) + 1
        weights = matrix[start:end, low:high]
        if dim == -1:
            pieces.append(masks[..., low:high] @ weights.T)
        else:
            pieces.append(weights @ masks[..., low:high, :])
    # Writing the products into a preallocated output with out= was much slower at times
    # (non-contiguous out views), so the blocks are concatenated.
    return torch.cat(pieces, dim)


@_float32
def semantic_inference(class_logits: Tensor, mask_probs: Tensor) -> Tensor:
    """Per-class probability maps: softmax classes (without no-object) x sigmoid masks.

    Args:
        class_logits: (Q, K+1).
        mask_probs: (Q, H, W) mask probabilities.

    Returns:
        (K, H, W) float32.
    """
    class_probs = class_logits.softmax(-1)[:, :-1]
    return torch.einsum("qk,qhw->khw", class_probs, mask_probs)


@_float32
def panoptic_queries(class_logits: Tensor, object_mask_threshold: float) -> Tensor:
    """Queries panoptic inference considers: class != no-object and score > threshold.

    Args:
        class_logits: (Q, K+1).
        object_mask_threshold: minimum class probability.

    Returns:
        (Q,) bool.
    """
    scores, labels = class_logits.softmax(-1).max(-1)
    return labels.ne(class_logits.shape[-1] - 1) & (scores > object_mask_threshold)


@_float32
def panoptic_inference(
    class_logits: Tensor,
    mask_probs: Tensor,
    *,
    thing_classes: Collection[int],
    object_mask_threshold: float,
    overlap_threshold: float,
    mask_threshold: float,
) -> Tuple[Tensor, List[Dict]]:
    """Non-overlapping segments from the confident queries.

    Each pixel goes to the kept query with the highest ``score * mask probability``; it stays
    unlabelled (0) unless that query's mask probability is >= ``mask_threshold``. A query's
    segment is kept if the pixels it wins cover at least ``overlap_threshold`` of its own mask
    (probability >= ``mask_threshold``); segments of the same stuff class are merged.

    Args:
        class_logits: (Q, K+1).
        mask_probs: (Q, H, W) mask probabilities.
        thing_classes: contiguous ids of the thing classes.
        object_mask_threshold: minimum class probability of a kept query.
        overlap_threshold: minimum ratio of won pixels to mask area.
        mask_threshold: probability above which a pixel belongs to a mask.

    Returns:
        panoptic_seg: (H, W) int32 segment ids, 0 = void.
        segments_info: one dict per segment with "id", "isthing", "category_id" (contiguous)
            and "area" (pixels).
    """
    height, width = mask_probs.shape[-2:]
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_probs.device)
    keep = panoptic_queries(class_logits, object_mask_threshold)
    if not keep.any():
        return panoptic_seg, []
    scores, labels = class_logits[keep].softmax(-1).max(-1)
    probs = mask_probs[keep]
    num_kept = len(probs)
    winner = (probs * scores[:, None, None]).argmax(0)
    inside = probs.gather(0, winner[None])[0] >= mask_threshold
    won_area = torch.bincount(winner.flatten(), minlength=num_kept).tolist()
    inside_area = torch.bincount(winner[inside], minlength=num_kept).tolist()
    mask_area = (probs >= mask_threshold).flatten(1).sum(1).tolist()

    segment_of_query = [0] * num_kept
    segments_info = []
    stuff_segments: Dict[int, int] = {}
    for query, category in enumerate(labels.tolist()):
        if min(won_area[query], mask_area[query], inside_area[query]) == 0:
            continue
        if won_area[query] / mask_area[query] < overlap_threshold:
            continue
        isthing = category in thing_classes
        if not isthing and category in stuff_segments:
            segment_of_query[query] = stuff_segments[category]
            continue
        segment_id = len(segments_info) + 1
        if not isthing:
            stuff_segments[category] = segment_id
        segment_of_query[query] = segment_id
        segments_info.append({"id": segment_id, "isthing": isthing, "category_id": category})
    lookup = torch.tensor(segment_of_query, dtype=torch.int32, device=mask_probs.device)
    panoptic_seg = torch.where(inside, lookup[winner], panoptic_seg)
    areas = torch.bincount(panoptic_seg.flatten().long(), minlength=len(segments_info) + 1)
    for info in segments_info:
        info["area"] = int(areas[info["id"]])
    return panoptic_seg, segments_info


@_float32
def instance_queries(
    class_logits: Tensor, topk: int, thing_classes: Optional[Collection[int]] = None
) -> Tuple[Tensor, Tensor, Tensor]:
    """The top-k (query, class) pairs by class probability.

    Args:
        class_logits: (Q, K+1).
        topk: number of pairs to select (over Q * K), before the thing filter.
        thing_classes: if given, pairs of other classes are dropped after the selection
            (panoptic-trained models).

    Returns:
        scores: (D,) class probabilities, descending, labels: (D,) classes, queries: (D,) query
            indices (D <= topk).
    """
    return top_class_pairs(class_logits.softmax(-1)[:, :-1], topk, thing_classes)


@_float32
def top_class_pairs(
    class_probs: Tensor, topk: int, thing_classes: Optional[Collection[int]] = None
) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`instance_queries` from class probabilities (Q, K) without the "no object"
    column instead of logits (for instance the average over a long video's clips)."""
    num_classes = class_probs.shape[-1]
    scores, flat = class_probs.flatten().topk(min(topk, class_probs.numel()))
    labels = flat % num_classes
    queries = flat // num_classes
    if thing_classes is not None:
        things = torch.as_tensor(sorted(thing_classes), dtype=labels.dtype, device=labels.device)
        keep = torch.isin(labels, things)
        scores, labels, queries = scores[keep], labels[keep], queries[keep]
    return scores, labels, queries


@_float32
def instance_inference(
    class_logits: Tensor,
    mask_probs: Tensor,
    *,
    topk: int,
    mask_threshold: float,
    thing_classes: Optional[Collection[int]] = None,
) -> Instances:
    """Instances from the top-k (query, class) pairs.

    The score of an instance is its class probability times the mean mask probability inside
    its binary mask (probability > ``mask_threshold``); boxes enclose the binary masks.

    Args:
        class_logits: (Q, K+1).
        mask_probs: (Q, H, W) mask probabilities.
        topk: number of (query, class) pairs kept.
        mask_threshold: probability above which a pixel belongs to a mask.
        thing_classes: if given, only instances of these classes are returned.

    Returns:
        Instances of image size (H, W) with pred_masks (D, H, W) bool, pred_boxes (D, 4) XYXY,
        scores (D,), pred_classes (D,) int64, sorted by class probability.
    """
    scores, labels, queries = instance_queries(class_logits, topk, thing_classes)
    # A query may appear with several classes: score and box its mask once.
    unique_queries, inverse = torch.unique(queries, return_inverse=True)
    probs = mask_probs[unique_queries]
    binary = probs > mask_threshold
    inside_sum = torch.where(binary, probs, 0.0).flatten(1).sum(1)
    area = binary.flatten(1).sum(1, dtype=torch.int32).to(probs.dtype)
    mask_scores = inside_sum / (area + 1e-6)
    boxes = mask_boxes(binary)
    result = Instances(tuple(mask_probs.shape[-2:]))
    result.pred_masks = binary[inverse]
    result.pred_boxes = Boxes(boxes[inverse])
    result.scores = scores * mask_scores[inverse]
    result.pred_classes = labels
    return result


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight boxes around binary masks, for all masks at once (no host synchronisation).

    Args:
        masks: (N, H, W) bool.

    Returns:
        (N, 4) float32 (x0, y0, x1, y1) in pixels, on the masks' device; x1 and y1 are
        exclusive (one past the last pixel); an empty mask gives zeros.
    """
    height, width = masks.shape[-2:]
    rows = masks.any(-1).to(torch.uint8)  # (N, H)
    cols = masks.any(-2).to(torch.uint8)  # (N, W)
    # argmax returns the first maximal index: the first row / column the mask touches
    boxes = torch.stack(
        (
            cols.argmax(-1),
            rows.argmax(-1),
            width - cols.flip(-1).argmax(-1),
            height - rows.flip(-1).argmax(-1),
        ),
        dim=-1,
    ).to(torch.float32)
    return boxes * rows.amax(-1, keepdim=True)
