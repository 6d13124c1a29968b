"""``DATALOADER.SAMPLER_TRAIN RepeatFactorTrainingSampler`` for every Mask2Former data set.

Detectron2's repeat-factor sampling (LVIS, Gupta et al. 2019, appendix B.2) repeats an image
``max(1, sqrt(REPEAT_THRESHOLD / f))`` times per epoch on average, ``f`` being the fraction of
training images that contain its rarest category. Detectron2 reads each image's categories
from its instance "annotations" only, so with a panoptic or semantic data set it fails with a
KeyError. Here the categories come from whatever the record holds:

- instance "annotations" (also a video's, one list per frame): their "category_id";
- panoptic "segments_info": the segments' "category_id";
- a semantic map only ("sem_seg_file_name"): the labels present in the PNG, less the ignore
  label. Every training PNG is read once before training; the training processes share the
  reading, each a slice of the images, and gather the results.

The repeat factors themselves are Detectron2's (``repeat_factors_from_category_frequency``).
"""

import logging
import time
from typing import Dict, List, Optional, Sequence, Set

import numpy as np
from detectron2.config import CfgNode
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.utils import comm
from PIL import Image

from .dataset_mappers.target_utils import values_present

__all__ = ["REPEAT_FACTOR_SAMPLER", "build_repeat_factor_sampler", "image_categories"]

logger = logging.getLogger(__name__)

# DATALOADER.SAMPLER_TRAIN's value for it
REPEAT_FACTOR_SAMPLER = "RepeatFactorTrainingSampler"


def _semantic_labels(path: str, ignore_label: int) -> Set[int]:
    with Image.open(path) as image:
        labels = np.asarray(image)
    if labels.ndim != 2:
        raise ValueError(f"{path}: a semantic map has one channel, this one {labels.shape}.")
    return {int(label) for label in values_present(labels.astype(np.int64))} - {ignore_label}


def image_categories(record: Dict, ignore_label: int) -> Set[int]:
    """The categories of one training record (image or video).

    Raises:
        ValueError: for a record with none of "annotations", "segments_info" and
            "sem_seg_file_name", naming its file.
        OSError: when its semantic PNG cannot be read.
    """
    if "annotations" in record:
        annotations = record["annotations"]
        if annotations and isinstance(annotations[0], list):  # a video: one list per frame
            annotations = [ann for frame in annotations for ann in frame]
        return {int(ann["category_id"]) for ann in annotations}
    if "segments_info" in record:
        return {int(segment["category_id"]) for segment in record["segments_info"]}
    if "sem_seg_file_name" in record:
        return _semantic_labels(record["sem_seg_file_name"], ignore_label)
    name = record.get("file_name") or record.get("file_names", ["a record"])[0]
    raise ValueError(
        f"{name}: DATALOADER.SAMPLER_TRAIN {REPEAT_FACTOR_SAMPLER} needs each training image's "
        "categories, from 'annotations', 'segments_info' or 'sem_seg_file_name'; this record "
        "has none of them."
    )


def _semantic_labels_or_none(record: Dict, ignore_label: int) -> Optional[Set[int]]:
    """The labels of the record's semantic PNG, or None when it cannot be read (the
    bad-sample handling reports the file when the loader maps it)."""
    try:
        return _semantic_labels(record["sem_seg_file_name"], ignore_label)
    except (OSError, ValueError) as error:
        logger.warning("Repeat factors: %s; the image counts as having no category.", error)
        return None


def _semantic_only(record: Dict) -> bool:
    """Whether the record's categories are only in its semantic PNG."""
    return (
        "annotations" not in record
        and "segments_info" not in record
        and ("sem_seg_file_name" in record)
    )


def categories_per_image(records: Sequence[Dict], ignore_label: int) -> List[Set[int]]:
    """Each record's categories. Records whose categories are in a semantic PNG are read by
    the training processes together, each a slice, and the results are gathered."""
    world, rank = comm.get_world_size(), comm.get_rank()
    needs_reading = [i for i, record in enumerate(records) if _semantic_only(record)]
    categories: List[Optional[Set[int]]] = [
        None if _semantic_only(record) else image_categories(record, ignore_label)
        for record in records
    ]
    if not needs_reading:
        return categories
    start = time.perf_counter()
    my_slice = needs_reading[rank::world]
    mine = {i: _semantic_labels_or_none(records[i], ignore_label) for i in my_slice}
    shares = comm.all_gather(mine) if world > 1 else [mine]
    for share in shares:
        for i, found in share.items():
            categories[i] = found
    unreadable = sum(categories[i] is None for i in needs_reading)
    logger.info(
        "Repeat factors: read the categories of %d semantic maps in %.0f s (%d processes)%s.",
        len(needs_reading),
        time.perf_counter() - start,
        world,
        f"; {unreadable} could not be read" if unreadable else "",
    )
    return [found or set() for found in categories]


def build_repeat_factor_sampler(
    cfg: CfgNode, records: Sequence[Dict], ignore_label: int
) -> RepeatFactorTrainingSampler:
    """Detectron2's ``RepeatFactorTrainingSampler`` over ``records`` with the repeat factors of
    ``DATALOADER.REPEAT_THRESHOLD`` and ``DATALOADER.REPEAT_SQRT``, from the categories of
    :func:`image_categories`."""
    categories = categories_per_image(records, ignore_label)
    # Detectron2's computation reads the categories of instance annotations
    as_annotations = [
        {"annotations": [{"category_id": c} for c in sorted(found)]} for found in categories
    ]
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        as_annotations, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
    )
    repeated = int((factors > 1).sum())
    what = "videos" if records and "file_names" in records[0] else "images"
    logger.info(
        "Repeat factors (DATALOADER.REPEAT_THRESHOLD %g): %d of %d %s repeated, up to %.2f "
        "times; an epoch holds %.0f %s on average.",
        cfg.DATALOADER.REPEAT_THRESHOLD,
        repeated,
        len(records),
        what,
        float(factors.max()) if len(factors) else 1.0,
        float(factors.sum()),
        what,
    )
    return RepeatFactorTrainingSampler(factors, seed=cfg.SEED)
