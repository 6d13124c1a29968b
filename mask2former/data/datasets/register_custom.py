"""Register your own data: one call per format, with checks that explain missing metadata.

- :func:`register_coco_instances_with_checks`: COCO instance JSON + image folder.
- :func:`register_coco_panoptic_with_checks`: COCO panoptic PNG+JSON (+ optional semantic PNGs
  and instance JSON), in the convention of ``coco_2017_*_panoptic_with_sem_seg``.
- :func:`register_sem_seg_folder`: a folder of images and a folder of label PNGs.

The checks run at registration time and look only at the metadata you pass; the files are
checked when the data set is first loaded.
"""

from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg

from .catalog_utils import require_paths
from .loaders import load_coco_panoptic_json_with_sem_seg

__all__ = [
    "register_coco_instances_with_checks",
    "register_coco_panoptic_with_checks",
    "register_sem_seg_folder",
    "register_panoptic_loader",
    "register_sem_seg_loader",
]

_DEFAULT_HINT = "check the paths given when the data set was registered"


def _fail(func: str, name: str, problem: str) -> None:
    raise ValueError(f"{func}('{name}'): {problem}")


def _check_contiguous(func: str, name: str, key: str, mapping: Dict, num_classes: int) -> None:
    bad = [v for v in mapping.values() if not 0 <= v < num_classes]
    if bad:
        _fail(
            func,
            name,
            f"metadata '{key}' maps to contiguous ids {bad} outside [0, {num_classes}): "
            "contiguous ids index the class-name list.",
        )


def register_coco_instances_with_checks(
    name: str, metadata: Dict, json_file: str, image_root: str
) -> None:
    """Register a COCO instance-segmentation JSON (polygons or RLE) for ``image_root``.

    Args:
        name: new data set name.
        metadata: may be empty: ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``
            are then read from the JSON's categories when the data set is loaded. If you
            give one of them, give both, with contiguous ids 0..len(thing_classes)-1.
        json_file: the COCO JSON.
        image_root: folder the JSON's ``file_name`` entries are relative to.
    """
    func = "register_coco_instances_with_checks"
    given = [k for k in ("thing_classes", "thing_dataset_id_to_contiguous_id") if k in metadata]
    if len(given) == 1:
        missing = {"thing_classes", "thing_dataset_id_to_contiguous_id"} - set(given)
        _fail(
            func,
            name,
            f"metadata has '{given[0]}' but not '{missing.pop()}': give both (the JSON category "
            "id -> contiguous id map and the class names in contiguous order) or neither (then "
            "both come from the JSON's categories, sorted by id).",
        )
    if given:
        _check_contiguous(
            func,
            name,
            "thing_dataset_id_to_contiguous_id",
            metadata["thing_dataset_id_to_contiguous_id"],
            len(metadata["thing_classes"]),
        )

    def load():
        require_paths(name, [json_file, image_root], _DEFAULT_HINT)
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )


def register_panoptic_loader(
    name: str,
    *,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: Optional[str],
    prepare_hint: str,
    image_ext: str = ".jpg",
) -> None:
    """Register the loader of a COCO panoptic data set whose metadata is set separately."""

    def load():
        paths = [image_root, panoptic_root, panoptic_json]
        require_paths(name, paths + ([sem_seg_root] if sem_seg_root else []), prepare_hint)
        meta = MetadataCatalog.get(name)
        id_maps = {
            "thing_dataset_id_to_contiguous_id": meta.thing_dataset_id_to_contiguous_id,
            "stuff_dataset_id_to_contiguous_id": meta.stuff_dataset_id_to_contiguous_id,
        }
        return load_coco_panoptic_json_with_sem_seg(
            panoptic_json, image_root, panoptic_root, sem_seg_root, id_maps, image_ext=image_ext
        )

    DatasetCatalog.register(name, load)


def register_coco_panoptic_with_checks(
    name: str,
    metadata: Dict,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: Optional[str] = None,
    instances_json: Optional[str] = None,
    *,
    ignore_label: int = 255,
    label_divisor: int = 1000,
    image_ext: str = ".jpg",
) -> None:
    """Register a COCO panoptic data set (evaluator_type "coco_panoptic_seg").

    Args:
        name: new data set name.
        metadata: ``thing_classes``, ``stuff_classes``, ``thing_dataset_id_to_contiguous_id``
            and ``stuff_dataset_id_to_contiguous_id`` in the convention of
            ``coco_2017_*_panoptic_with_sem_seg``: every category has one contiguous id, its
            index in ``stuff_classes`` (which lists all categories); the stuff map lists every
            category, the thing map the things. Build them from the
            panoptic JSON's category list with
            :func:`mask2former.data.datasets.catalog_utils.panoptic_category_metadata`.
        image_root: image folder; an image has its panoptic PNG's stem and ``image_ext``.
        panoptic_root: folder of panoptic PNGs.
        panoptic_json: COCO panoptic JSON.
        sem_seg_root: optional folder of semantic PNGs (contiguous ids, ``ignore_label``).
        instances_json: optional COCO instance JSON of the things, for instance evaluation.
        ignore_label: semantic label of unlabeled pixels.
        label_divisor: panoptic id = category * label_divisor + instance, in predictions.
        image_ext: image file extension.
    """
    func = "register_coco_panoptic_with_checks"
    required = (
        "thing_classes",
        "stuff_classes",
        "thing_dataset_id_to_contiguous_id",
        "stuff_dataset_id_to_contiguous_id",
    )
    missing = [k for k in required if k not in metadata]
    if missing:
        _fail(
            func,
            name,
            f"metadata lacks {missing}. Build all four from the panoptic JSON's categories with "
            "panoptic_category_metadata(categories) (mask2former.data.datasets.catalog_utils): "
            "stuff_classes lists every category, thing_classes the things, and both id maps "
            "point into stuff_classes (the stuff map covers every category).",
        )
    num_classes = len(metadata["stuff_classes"])
    for key in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"):
        _check_contiguous(func, name, key, metadata[key], num_classes)
    if len(metadata["thing_dataset_id_to_contiguous_id"]) != len(metadata["thing_classes"]):
        _fail(
            func,
            name,
            "thing_dataset_id_to_contiguous_id and thing_classes differ in length: every thing "
            "category needs exactly one name.",
        )
    register_panoptic_loader(
        name,
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        prepare_hint=_DEFAULT_HINT,
        image_ext=image_ext,
    )
    paths = {"image_root": image_root, "panoptic_root": panoptic_root}
    paths["panoptic_json"] = panoptic_json
    if sem_seg_root is not None:
        paths["sem_seg_root"] = sem_seg_root
    if instances_json is not None:
        paths["json_file"] = instances_json
    MetadataCatalog.get(name).set(
        evaluator_type="coco_panoptic_seg",
        ignore_label=ignore_label,
        label_divisor=label_divisor,
        **paths,
        **metadata,
    )


def register_sem_seg_loader(
    name: str,
    *,
    image_root: str,
    sem_seg_root: str,
    prepare_hint: str,
    image_ext: str = "jpg",
    gt_ext: str = "png",
) -> None:
    """Register the loader of a semantic segmentation folder whose metadata is set separately."""

    def load():
        require_paths(name, [image_root, sem_seg_root], prepare_hint)
        return load_sem_seg(sem_seg_root, image_root, gt_ext=gt_ext, image_ext=image_ext)

    DatasetCatalog.register(name, load)


def register_sem_seg_folder(
    name: str,
    image_root: str,
    gt_root: str,
    stuff_classes: Optional[Sequence[str]] = None,
    ignore_label: Optional[int] = None,
    *,
    image_ext: str = "jpg",
    gt_ext: str = "png",
    stuff_colors: Optional[List[List[int]]] = None,
) -> None:
    """Register a semantic segmentation data set (evaluator_type "sem_seg").

    Args:
        name: new data set name.
        image_root: folder of images.
        gt_root: folder of label images with the same relative paths (other extension); a
            pixel's value is its class index in ``stuff_classes``.
        stuff_classes: class names, index = label value. Required.
        ignore_label: label value of unlabeled pixels (usually 255). Required.
        image_ext, gt_ext: file extensions.
        stuff_colors: optional RGB colour per class, for visualisation.
    """
    func = "register_sem_seg_folder"
    if not stuff_classes:
        _fail(
            func,
            name,
            "stuff_classes is missing: give the list of class names, where the name at index i "
            "is the class of pixels labelled i in the label PNGs.",
        )
    if ignore_label is None:
        _fail(
            func,
            name,
            "ignore_label is missing: give the label value of unlabeled pixels (255 in most data "
            "sets); those pixels are excluded from training and evaluation.",
        )
    if 0 <= ignore_label < len(stuff_classes):
        _fail(
            func,
            name,
            f"ignore_label {ignore_label} is also the label of class "
            f"'{stuff_classes[ignore_label]}': pick a value outside [0, {len(stuff_classes)}).",
        )
    if stuff_colors is not None and len(stuff_colors) != len(stuff_classes):
        _fail(func, name, "stuff_colors needs one colour per entry of stuff_classes.")
    register_sem_seg_loader(
        name,
        image_root=image_root,
        sem_seg_root=gt_root,
        prepare_hint=_DEFAULT_HINT,
        image_ext=image_ext,
        gt_ext=gt_ext,
    )
    extra = {"stuff_colors": stuff_colors} if stuff_colors is not None else {}
    MetadataCatalog.get(name).set(
        image_root=image_root,
        sem_seg_root=gt_root,
        evaluator_type="sem_seg",
        ignore_label=ignore_label,
        stuff_classes=list(stuff_classes),
        **extra,
    )
