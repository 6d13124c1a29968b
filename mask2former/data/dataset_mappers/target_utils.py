"""Ground-truth conversions shared by the dataset mappers.

Shapes: H, W image height and width; N number of instances (masks).
"""

from typing import Dict, List, Optional, Sequence, Tuple

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
    "semantic_from_panoptic",
    "transform_masks",
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


def transform_masks(masks: Sequence[np.ndarray], transforms: T.TransformList) -> List[np.ndarray]:
    """Apply geometric ``transforms`` to each (H, W) uint8 mask (nearest interpolation)."""
    return [transforms.apply_segmentation(m) for m in masks]


def masks_to_instances(
    classes: Sequence[int], masks: Sequence, image_shape: Tuple[int, int]
) -> Instances:
    """Build Instances from per-instance masks, dropping masks that are empty.

    Args:
        classes: N contiguous category ids.
        masks: N masks, each (H, W) array or tensor (non-zero = foreground).
        image_shape: (H, W).

    Returns:
        Instances with gt_classes (M,) int64 and gt_masks BitMasks (M, H, W), M <= N being the
        non-empty masks.
    """
    height, width = image_shape
    mask_tensors = [torch.as_tensor(np.ascontiguousarray(m)) > 0 for m in masks]
    keep = [i for i, m in enumerate(mask_tensors) if m.numpy().any()]
    instances = Instances(image_shape)
    instances.gt_classes = torch.tensor([int(classes[i]) for i in keep], dtype=torch.int64)
    if keep:
        stacked = torch.stack([mask_tensors[i] for i in keep])
    else:
        stacked = torch.zeros((0, height, width), dtype=torch.bool)
    instances.gt_masks = BitMasks(stacked)
    return instances


def semantic_to_instances(sem_seg: torch.Tensor, ignore_label: int) -> Instances:
    """One mask per category present in a semantic map; ``ignore_label`` never becomes a mask.

    Args:
        sem_seg: (H, W) int64 map of contiguous category ids.
        ignore_label: value of unlabeled pixels.

    Returns:
        Instances with gt_classes (K,) and gt_masks BitMasks (K, H, W).
    """
    classes = [int(c) for c in torch.unique(sem_seg) if int(c) != ignore_label]
    masks = [sem_seg == c for c in classes]
    return masks_to_instances(classes, masks, tuple(sem_seg.shape))


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
    masks = [pan_seg == s["id"] for s in kept]
    # every pixel is void, a kept segment's or a crowd segment's, unless an id is unlisted;
    # counting the masks' pixels costs far less than comparing every pixel with every id again
    listed = np.count_nonzero(pan_seg == 0) + sum(np.count_nonzero(m) for m in masks)
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
