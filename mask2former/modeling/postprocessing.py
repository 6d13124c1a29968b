"""Turning one image's mask-classification output into semantic, panoptic and instance results.

Pure functions. The network predicts masks at 1/4 of the padded input; the official release
upsamples all of them to the padded size, crops the valid image region and resizes that to the
original image size (detectron2's ``sem_seg_postprocess``), then applies the sigmoid again for
each output. Here the two bilinear resizes are composed into one separable linear map (the same
weights, applied as banded matrix products, with no padded-size intermediate); the caller resizes
once, takes the sigmoid once and shares the probabilities between the outputs, and can restrict
both to the queries the enabled outputs read (see ``panoptic_queries``, ``instance_queries``).

On a GPU, the functions read back from the device only what sets a shape or goes into the
Python results, once each: panoptic inference the kept queries and the segment table, instance
inference the selected queries; resizing and semantic inference read nothing (the resampling
weights are computed on the host). ``tests/test_host_syncs.py`` holds them to that.

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

from ..utils.host_syncs import on_host, to_device

_Function = TypeVar("_Function", bound=Callable)

__all__ = [
    "BAND_BLOCK_SIZE",
    "resize_mask_logits",
    "semantic_inference",
    "panoptic_queries",
    "panoptic_inference",
    "instance_queries",
    "instance_query_mask",
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
    rows = _banded_resampling(in_h, padded_size[0], image_size[0], output_size[0], block_size)
    cols = _banded_resampling(in_w, padded_size[1], image_size[1], output_size[1], block_size)
    rows, cols = (
        (to_device(matrix, mask_logits.device), blocks) for matrix, blocks in (rows, cols)
    )
    if _columns_first(in_h, in_w, *output_size):
        return _apply_banded(rows, _apply_banded(cols, mask_logits, -1), -2)
    return _apply_banded(cols, _apply_banded(rows, mask_logits, -2), -1)


def _columns_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Whether to resize the width first, then the height (else the other way round).

    Either order is two matrix products per mask. A heuristic: compare their multiply-adds
    as dense products, ``in_h * in_w * out_w + out_h * in_h * out_w`` for width first against
    ``out_h * in_h * in_w + out_h * in_w * out_w`` for height first; both results are the
    same map up to float rounding.
    """
    return in_h * in_w * out_w + out_h * in_h * out_w <= out_h * in_h * in_w + out_h * in_w * out_w


# (start, end, low, high) of each block of a banded matrix: its output positions [start, end)
# read only the input positions [low, high).
_Blocks = Tuple[Tuple[int, int, int, int], ...]


@functools.lru_cache(maxsize=64)
def _banded_resampling(
    in_size: int, padded_size: int, valid_size: int, out_size: int, block_size: int
) -> Tuple[Tensor, _Blocks]:
    """The matrix of :func:`_resampling_matrix` and its blocks of ``block_size`` outputs.

    Computed on the host (the band limits are Python ints: on a GPU, finding them there would
    make the host wait for the device) and cached per size; do not modify the matrix. Made
    outside inference mode, so that calls which record gradients can use it too.

    Returns:
        (out_size, in_size) float32 matrix on the CPU, and its blocks.
    """
    with on_host(), torch.inference_mode(False):
        matrix = _resampling_matrix(in_size, padded_size, valid_size, out_size, torch.device("cpu"))
        nonzero = matrix != 0
        positions = torch.arange(in_size)
        first = torch.where(nonzero, positions, in_size).min(1).values.tolist()
        last = torch.where(nonzero, positions, -1).max(1).values.tolist()
    blocks = []
    for start in range(0, out_size, block_size):
        end = min(start + block_size, out_size)
        blocks.append((start, end, min(first[start:end]), max(last[start:end]) + 1))
    return matrix, tuple(blocks)


def _apply_banded(banded: Tuple[Tensor, _Blocks], masks: Tensor, dim: int) -> Tensor:
    """Apply a banded (out, in) matrix, given with its blocks, along ``dim`` (-1 or -2) of
    ``masks``.

    Each block of output positions reads only the input span its weights cover, so the work
    is a few small matrix products instead of one mostly-zero dense one.
    """
    matrix, blocks = banded
    pieces = []
    for start, end, low, high in blocks:
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
    device = mask_probs.device
    # The one read of the kept queries (their number sets the shapes below).
    kept = panoptic_queries(class_logits, object_mask_threshold).nonzero().squeeze(1)
    if len(kept) == 0:
        return torch.zeros((height, width), dtype=torch.int32, device=device), []
    scores, labels = class_logits[kept].softmax(-1).max(-1)
    probs = mask_probs[kept]
    winner = (probs * scores[:, None, None]).argmax(0)
    inside = probs.gather(0, winner[None])[0] >= mask_threshold
    won_area = _count(winner, len(kept))
    inside_area = _count(winner, len(kept), inside)
    mask_area = (probs >= mask_threshold).flatten(1).sum(1)

    # Which queries make a segment, all on the device: a query is kept if it wins pixels
    # inside its mask and at least overlap_threshold of its mask area; a stuff query joins
    # the segment of the first kept query of its class; ids count the segments in query order.
    enough = won_area.double() / mask_area.double() >= overlap_threshold
    valid = (won_area > 0) & (mask_area > 0) & (inside_area > 0) & enough
    is_thing = _class_mask(thing_classes, class_logits.shape[-1] - 1, device)[labels]
    stuff = valid & ~is_thing
    # same_stuff[q, r]: r is a kept stuff query of q's class
    same_stuff = (labels[:, None] == labels[None, :]) & stuff[None, :]
    joins = stuff & (same_stuff & _strictly_lower(len(kept), device)).any(1)
    creates = valid & ~joins
    new_id = torch.cumsum(creates, 0) * creates
    first_of_class = same_stuff.int().argmax(1)
    segment_of_query = torch.where(joins, new_id[first_of_class], new_id).to(torch.int32)
    panoptic_seg = torch.where(inside, segment_of_query[winner], 0)
    areas = _count(panoptic_seg, len(kept) + 1)

    # The one read of the segments: (creates, label, is thing, segment area) per query.
    table = torch.stack((creates.long(), labels, is_thing.long(), areas[new_id])).T.tolist()
    segments_info = []
    for creates_segment, category, isthing, area in table:
        if creates_segment:
            segments_info.append(
                {
                    "id": len(segments_info) + 1,
                    "isthing": bool(isthing),
                    "category_id": category,
                    "area": area,
                }
            )
    return panoptic_seg, segments_info


def _count(values: Tensor, length: int, where: Optional[Tensor] = None) -> Tensor:
    """How often each of 0 .. length - 1 occurs in ``values`` (at the ``where`` positions):
    a bincount whose size is known without reading the maximum back from the device."""
    counts = torch.zeros(length, dtype=torch.long, device=values.device)
    ones = torch.ones_like(values, dtype=torch.long) if where is None else where.long()
    return counts.index_add_(0, values.flatten().long(), ones.flatten())


def _strictly_lower(size: int, device: torch.device) -> Tensor:
    """(size, size) bool, True where the column index is below the row index."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril(-1)


def _class_mask(classes: Collection[int], num_classes: int, device: torch.device) -> Tensor:
    """(num_classes,) bool on ``device``, True at ``classes``; copied without making the host
    wait for the device."""
    mask = torch.tensor([index in classes for index in range(num_classes)])
    return to_device(mask, device)


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
    if thing_classes is None:
        return _top_pairs(class_logits, topk)
    return _instance_pairs(class_logits, topk, thing_classes)[:3]


def _instance_pairs(
    class_logits: Tensor, topk: int, thing_classes: Optional[Collection[int]]
) -> Tuple[Tensor, Tensor, Tensor, List[int]]:
    """:func:`instance_queries`, and its queries as Python ints (read from the device once)."""
    scores, labels, queries = _top_pairs(class_logits, topk)
    if thing_classes is None:
        return scores, labels, queries, queries.tolist()
    is_thing = _class_mask(thing_classes, class_logits.shape[-1] - 1, labels.device)[labels]
    pairs = torch.stack((queries, is_thing.long())).T.tolist()
    kept = [index for index, (_, thing) in enumerate(pairs) if thing]
    kept_on_device = to_device(torch.tensor(kept, dtype=torch.long), labels.device)
    scores, labels, queries = (
        scores[kept_on_device],
        labels[kept_on_device],
        queries[kept_on_device],
    )
    return scores, labels, queries, [pairs[index][0] for index in kept]


def _top_pairs(class_logits: Tensor, topk: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Scores, labels and queries of the top-k (query, class) pairs, before any filter."""
    return _top_probability_pairs(class_logits.softmax(-1)[:, :-1], topk)


@_float32
def top_class_pairs(
    class_probs: Tensor, topk: int, thing_classes: Optional[Collection[int]] = None
) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`instance_queries` from class probabilities (Q, K) without the "no object"
    column instead of logits (for instance the average over a long video's clips)."""
    scores, labels, queries = _top_probability_pairs(class_probs, topk)
    if thing_classes is not None:
        is_thing = _class_mask(thing_classes, class_probs.shape[-1], labels.device)[labels]
        scores, labels, queries = scores[is_thing], labels[is_thing], queries[is_thing]
    return scores, labels, queries


def _top_probability_pairs(class_probs: Tensor, topk: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Scores, labels and queries of the top-k (query, class) pairs of (Q, K) probabilities."""
    num_classes = class_probs.shape[-1]
    scores, flat = class_probs.flatten().topk(min(topk, class_probs.numel()))
    return scores, flat % num_classes, flat // num_classes


@_float32
def instance_query_mask(
    class_logits: Tensor, topk: int, thing_classes: Optional[Collection[int]] = None
) -> Tensor:
    """The queries of :func:`instance_queries` as a mask, found without reading anything back
    from the device.

    Returns:
        (Q,) bool, True at the queries of the kept pairs.
    """
    _, labels, queries = _top_pairs(class_logits, topk)
    if thing_classes is None:
        chosen = torch.ones_like(queries)
    else:
        chosen = _class_mask(thing_classes, class_logits.shape[-1] - 1, labels.device)[labels]
    hits = torch.zeros(len(class_logits), dtype=torch.long, device=class_logits.device)
    return hits.index_add_(0, queries, chosen.long()) > 0


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
    scores, labels, _, queries = _instance_pairs(class_logits, topk, thing_classes)
    # A query may appear with several classes: score and box its mask once.
    unique_queries = sorted(set(queries))
    position = {query: index for index, query in enumerate(unique_queries)}
    inverse = [position[query] for query in queries]
    unique_queries, inverse = (
        to_device(torch.tensor(indices, dtype=torch.long), mask_probs.device)
        for indices in (unique_queries, inverse)
    )
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
