"""MODEL.SEM_SEG_HEAD.NUM_CLASSES against the classes of the data sets a run uses.

A model with fewer classes than its training data stops at the first batch (the mappers check
each label); one with more trains without complaint and then predicts classes the data set
does not have, which Detectron2's COCO evaluator refuses with an assertion after the training
or inference has run (and the panoptic and semantic results name classes that do not exist).
Both usually mean a config copied from another data set, e.g. a COCO config (133 classes)
fine-tuned on one's own data: :func:`check_num_classes` says so before anything runs.
"""

from typing import List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from .dataset_mappers import dataset_mapper_class

__all__ = ["NumClassesError", "check_num_classes", "dataset_classes"]


class NumClassesError(ValueError):
    """MODEL.SEM_SEG_HEAD.NUM_CLASSES disagrees with a data set's classes; the message names
    both and what to set."""


def dataset_classes(cfg: CfgNode, dataset_name: str, *, load: bool = False) -> Optional[List]:
    """The classes of ``dataset_name`` that ``cfg``'s model predicts: the metadata field its
    dataset mapper names (``class_names_key``: "thing_classes" for instance and video models,
    "stuff_classes", every class, for semantic and panoptic ones).

    Args:
        load: when the metadata has no such field yet (a data set that reads its classes from
            its files when loaded, as ``register_coco_instances`` ones do), load the data set
            to fill it.

    Returns:
        the class names, or None when they are unknown (a mapper without ``class_names_key``,
        or a data set whose metadata does not list them).
    """
    key = _class_names_key(cfg)
    return None if key is None else _listed_classes(dataset_name, key, load)


def _class_names_key(cfg: CfgNode) -> Optional[str]:
    return getattr(dataset_mapper_class(cfg), "class_names_key", None)


def _listed_classes(dataset_name: str, key: str, load: bool) -> Optional[List]:
    metadata = MetadataCatalog.get(dataset_name)
    if load and not metadata.get(key, None) and dataset_name in DatasetCatalog:
        DatasetCatalog.get(dataset_name)
    classes = metadata.get(key, None)
    return list(classes) if classes else None


def check_num_classes(
    cfg: CfgNode, dataset_names: Optional[Sequence[str]] = None, *, load: bool = False
) -> None:
    """Raise :class:`NumClassesError` when a data set lists another number of classes than
    ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` (see :func:`dataset_classes`; data sets whose classes
    are unknown are not checked).

    Args:
        dataset_names: default ``DATASETS.TRAIN`` and ``DATASETS.TEST``.
        load: load the data sets whose metadata does not list their classes yet.

    Raises:
        NumClassesError: the message names the data sets, their counts and what to set.
        DatasetFilesMissingError: a data set whose classes are read from its files (ADE20K
            instance, Mapillary Vistas) lacks them.
    """
    key = _class_names_key(cfg)
    if key is None:
        return
    if dataset_names is None:
        dataset_names = [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    differing = {}  # data set -> its number of classes, where it is not num_classes
    for name in dict.fromkeys(dataset_names):
        classes = _listed_classes(name, key, load)
        if classes is not None and len(classes) != num_classes:
            differing[name] = len(classes)
    if not differing:
        return
    described = "; ".join(
        f"data set {name!r} has {count} classes (its metadata's {key})"
        for name, count in differing.items()
    )
    counts = sorted(set(differing.values()))
    advice = (
        f"Set MODEL.SEM_SEG_HEAD.NUM_CLASSES {counts[0]}"
        if len(counts) == 1
        else "Use data sets of one class list"
    )
    raise NumClassesError(
        f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes}, but {described}. "
        f"{advice}. Fine-tuning from weights trained with another number of classes works: "
        "their class layer is left out (a warning names it) and learned afresh."
    )
