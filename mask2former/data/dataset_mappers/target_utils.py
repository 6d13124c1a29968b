"""Ground-truth conversions shared by the dataset mappers.

Shapes: H, W image height and width; N number of instances (masks).
"""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances, polygons_to_bitmask

__all__ = [
    "annotation_to_mask",
    "masks_to_instances",
    "semantic_to_instances",
    "panoptic_to_instances",
    "pad_to_divisibility",
    "semantic_from_instances",
    "semantic_from_panoptic",
    "rasterize_polygons",
    "transform_segmentations",
    "values_present",
]


def annotation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Rasterise one COCO-style segmentation.

    Args:
        segmentation: polygons (list of flat [x0, y0, x1, y1, ...] lists), an RLE dict
            (compressed "counts" string/bytes or uncompressed list of counts), or a bitmask
            ((H, W) array).
        height, width: image size in pixels.

    Returns:
        (H, W) uint8 mask with values 0/1.
    """
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=np.uint8)
        return polygons_to_bitmask(segmentation, height, width).astype(np.uint8)
    if isinstance(segmentation, dict):
        if isinstance(segmentation["counts"], list):
            segmentation = mask_util.frPyObjects(segmentation, *segmentation["size"])
        mask = mask_util.decode(segmentation)
    else:
        mask = np.asarray(segmentation)
    if mask.shape != (height, width):
        raise ValueError(
            f"A mask annotation has shape {mask.shape}, but the image is {(height, width)}."
        )
    return (mask > 0).astype(np.uint8)


def _polygon_points(polygon: Sequence[float], source: str) -> np.ndarray:
    """(K, 2) x, y points of a flat COCO polygon [x0, y0, x1, y1, ...] of ``source``."""
    points = np.asarray(polygon, dtype=np.float64)
    if points.ndim != 1 or len(points) < 6 or len(points) % 2:
        raise ValueError(
            f"{source}: a polygon of {points.size} coordinates; a COCO polygon is a flat list "
            "[x0, y0, x1, y1, ...] of at least 3 points (datasets/check_dataset.py lists them)."
        )
    return points.reshape(-1, 2)


def rasterize_polygons(polygons: Sequence[np.ndarray], mask: np.ndarray) -> None:
    """Set the pixels of ``mask`` ((H, W) bool) that the polygons cover, as
    ``polygons_to_bitmask`` would on the whole mask.

    Only the polygons' bounding box is rasterised: pycocotools returns a column-major array,
    and copying a whole image of it into a row-major mask costs more than rasterising.

    Args:
        polygons: each (K, 2) or flat (2K,) x, y pixel coordinates; parts outside the mask are
            cut off.
    """
    points = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
    if not points:
        return
    corners = np.concatenate(points)
    height, width = mask.shape
    # one pixel of margin each side: the rasteriser's pixel of a vertex may round outwards
    x0 = max(int(np.floor(corners[:, 0].min())) - 1, 0)
    y0 = max(int(np.floor(corners[:, 1].min())) - 1, 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + 2, width)
    y1 = min(int(np.ceil(corners[:, 1].max())) + 2, height)
    if x1 <= x0 or y1 <= y0:
        return
    shifted = [(p - (x0, y0)).ravel() for p in points]
    mask[y0:y1, x0:x1] |= polygons_to_bitmask(shifted, y1 - y0, x1 - x0)


def transform_segmentations(
    segmentations: Sequence,
    transforms: T.TransformList,
    input_shape: Tuple[int, int],
    output_shape: Tuple[int, int],
    *,
    source: str = "an annotation",
) -> np.ndarray:
    """Rasterise N COCO-style segmentations as the ``transforms`` place them.

    Polygons are transformed as coordinates and rasterised at the output size, as Detectron2's
    and the official mappers do (crisper than resizing a rasterised mask, and one rasterisation
    at the output size costs less than a resize). Parts outside the output are cut off by the
    rasterisation. RLE and bitmask segmentations are decoded at the input size and transformed
    as masks (nearest interpolation).

    Args:
        segmentations: N segmentations in the formats of :func:`annotation_to_mask`.
        transforms: the augmentation's transforms; they turn ``input_shape`` into
            ``output_shape``.
        input_shape, output_shape: (H, W) and (H', W').
        source: the image whose annotations they are, named in errors.

    Returns:
        (N, H', W') bool masks. Padding is False in the RLE and bitmask ones; a polygon that
        reaches outside its image can cover padding (clear it with ``valid_region``).

    Raises:
        ValueError: for a polygon that is not a flat list of at least 3 x, y points.
    """
    out = np.zeros((len(segmentations), *output_shape), dtype=bool)
    for segmentation, mask in zip(segmentations, out):
        if isinstance(segmentation, list):
            points = [_polygon_points(p, source) for p in segmentation]
            polygons = [transforms.apply_coords(p) for p in points]
            rasterize_polygons(polygons, mask)
            continue
        decoded = annotation_to_mask(segmentation, *input_shape)
        # padding gets the augmentation's segmentation pad value, which is never 1 here
        np.equal(transforms.apply_segmentation(decoded), 1, out=mask)
    return out


def masks_to_instances(
    classes: Sequence[int], masks: Union[np.ndarray, torch.Tensor], image_shape: Tuple[int, int]
) -> Instances:
    """Build Instances from per-instance masks, dropping masks that are empty.

    Args:
        classes: N contiguous category ids.
        masks: (N, H, W) array or tensor (non-zero = foreground); a bool array is used without
            a copy when no mask is empty.
        image_shape: (H, W).

    Returns:
        Instances with gt_classes (M,) int64 and gt_masks BitMasks (M, H, W), M <= N being the
        non-empty masks.
    """
    masks = masks.numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if len(masks) == 0:
        masks = np.zeros((0, *image_shape), dtype=bool)
    elif masks.dtype != bool:
        masks = masks != 0
    keep = masks.any(axis=(1, 2))
    if not keep.all():
        masks = masks[keep]
    instances = Instances(image_shape)
    instances.gt_classes = torch.as_tensor(np.asarray(classes, dtype=np.int64)[keep])
    instances.gt_masks = BitMasks(torch.from_numpy(np.ascontiguousarray(masks)))
    return instances


def _equal_masks(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """(N, H, W) bool: ``labels == value`` for each of the N values, written in place (a
    broadcast comparison would be about twice as slow)."""
    masks = np.empty((len(values), *labels.shape), dtype=bool)
    for mask, value in zip(masks, values):
        np.equal(labels, value, out=mask)
    return masks


def values_present(labels: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer map: by counting where the values are small
    and non-negative (labels and ignore values are), 5-10x faster than sorting."""
    flat = labels.ravel()
    if flat.size and 0 <= flat.min() and flat.max() < 2**20:
        return np.flatnonzero(np.bincount(flat))
    return np.unique(flat)


def semantic_to_instances(sem_seg: torch.Tensor, ignore_label: int) -> Instances:
    """One mask per category present in a semantic map; ``ignore_label`` never becomes a mask.

    Args:
        sem_seg: (H, W) int64 map of contiguous category ids.
        ignore_label: value of unlabeled pixels.

    Returns:
        Instances with gt_classes (K,) and gt_masks BitMasks (K, H, W).
    """
    labels = sem_seg.numpy()
    classes = [int(c) for c in values_present(labels) if int(c) != ignore_label]
    return masks_to_instances(classes, _equal_masks(labels, classes), tuple(sem_seg.shape))


def panoptic_to_instances(
    pan_seg: np.ndarray,
    segments_info: List[Dict],
    image_shape: Tuple[int, int],
    *,
    source: str = "the panoptic map",
) -> Instances:
    """One mask per non-crowd segment of a panoptic id map; emptied segments are dropped.

    Args:
        pan_seg: (H, W) int64 segment ids (panopticapi ``rgb2id``), 0 = void.
        segments_info: dataset-dict segments with "id", contiguous "category_id", "iscrowd".
        image_shape: (H, W).
        source: the map's file, named in the error.

    Raises:
        ValueError: when pixels of ``pan_seg`` carry a non-zero id that ``segments_info`` does
            not list (their class would be unknown).
    """
    kept = [s for s in segments_info if not s.get("iscrowd", 0)]
    masks = _equal_masks(pan_seg, [s["id"] for s in kept])
    # every pixel is void, a kept segment's or a crowd segment's, unless an id is unlisted;
    # counting the masks' pixels costs far less than comparing every pixel with every id again
    listed = np.count_nonzero(pan_seg == 0) + np.count_nonzero(masks)
    crowd = [s for s in segments_info if s.get("iscrowd", 0)]
    listed += sum(np.count_nonzero(pan_seg == s["id"]) for s in crowd)
    if listed != pan_seg.size:
        unlisted = set(np.unique(pan_seg).tolist()) - {0} - {s["id"] for s in segments_info}
        if unlisted:
            raise ValueError(
                f"{source} holds segment ids {sorted(unlisted)} that its segments_info (the "
                "panoptic JSON) does not list."
            )
    return masks_to_instances([s["category_id"] for s in kept], masks, image_shape)


def semantic_from_panoptic(
    pan_seg: np.ndarray, segments_info: List[Dict], ignore_label: int
) -> np.ndarray:
    """(H, W) contiguous-id semantic map of a panoptic id map; void and crowd are ignored."""
    sem_seg = np.full(pan_seg.shape, ignore_label, dtype=np.int64)
    for seg in segments_info:
        if not seg.get("iscrowd", 0):
            sem_seg[pan_seg == seg["id"]] = seg["category_id"]
    return sem_seg


def semantic_from_instances(instances: Instances, ignore_label: int) -> torch.Tensor:
    """(H, W) int64 semantic map of non-overlapping instance masks (panoptic segments): each
    mask's pixels get its class, the others ``ignore_label``."""
    masks = instances.gt_masks.tensor.numpy()
    sem_seg = np.full(masks.shape[1:], ignore_label, dtype=np.int64)
    for mask, category in zip(masks, instances.gt_classes.tolist()):
        np.copyto(sem_seg, category, where=mask)
    return torch.from_numpy(sem_seg)


def pad_to_divisibility(
    image: torch.Tensor,
    size_divisibility: int,
    targets: Optional[Dict[str, Tuple[torch.Tensor, int]]] = None,
    *,
    image_pad_value: float = 128.0,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Pad bottom/right up to the next multiple of ``size_divisibility``.

    An image no larger than ``size_divisibility`` is padded to exactly that size, which is
    what ``INPUT.SIZE_DIVISIBILITY`` means for the official crop-then-pad configs.

    Args:
        image: (C, H, W).
        size_divisibility: <= 0 disables padding.
        targets: name -> ((..., H, W) tensor, pad value), padded the same way.
        image_pad_value: value of padded image pixels.

    Returns:
        the padded image and a dict of the padded targets.
    """
    targets = targets or {}
    height, width = image.shape[-2:]
    if size_divisibility <= 0:
        return image, {k: t for k, (t, _v) in targets.items()}
    new_h = -(-height // size_divisibility) * size_divisibility
    new_w = -(-width // size_divisibility) * size_divisibility
    padding = [0, new_w - width, 0, new_h - height]
    padded = F.pad(image, padding, value=image_pad_value)
    return padded, {k: F.pad(t, padding, value=v) for k, (t, v) in targets.items()}
