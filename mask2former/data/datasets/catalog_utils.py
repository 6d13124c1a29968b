"""Helpers shared by the data set registrations: roots, missing-file errors, category tables.

Registrations never touch the file system at import time. Category tables that ship with the
package live in ``mask2former/data/metadata/*.json``; tables that only the raw data set can
provide (ADE20K-full, Mapillary Vistas, ADE20K panoptic/instance) are read from the prepared
data set the first time a category field of the metadata is accessed
(:class:`FileCategoryMetadata`).
"""

import json
import os
from typing import Callable, Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata

from ...utils.json_io import read_json

__all__ = [
    "DatasetFilesMissingError",
    "FileCategoryMetadata",
    "CATEGORY_FIELDS",
    "get_datasets_root",
    "require_paths",
    "load_package_categories",
    "panoptic_category_metadata",
    "register_metadata_categories",
    "register_metadata_file",
    "set_file_category_metadata",
]

# Metadata fields that describe the category table.
CATEGORY_FIELDS = (
    "thing_classes",
    "thing_colors",
    "stuff_classes",
    "stuff_colors",
    "thing_dataset_id_to_contiguous_id",
    "stuff_dataset_id_to_contiguous_id",
)

_METADATA_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "metadata")


class DatasetFilesMissingError(FileNotFoundError):
    """A registered data set's files are not where the registration expects them."""


def get_datasets_root() -> str:
    """The folder that holds all data sets: ``$DETECTRON2_DATASETS``, default ``datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def require_paths(dataset_name: str, paths: Sequence[str], prepare_hint: str) -> None:
    """Raise a helpful error when any of ``paths`` does not exist.

    Args:
        dataset_name: registered name, e.g. "ade20k_panoptic_train".
        paths: files or folders the loader needs.
        prepare_hint: how to create them, e.g. "python datasets/prepare_ade20k_pan_seg.py".

    Raises:
        DatasetFilesMissingError: naming the first missing path, the data set root and the
            preparation step.
    """
    for path in paths:
        if not os.path.exists(path):
            raise DatasetFilesMissingError(
                f"Data set '{dataset_name}': {path} does not exist (looked in "
                f"{os.path.abspath(os.path.dirname(path))}; data sets are found under "
                f"DETECTRON2_DATASETS={get_datasets_root()}). Prepare it with: {prepare_hint} "
                "(see datasets/README.md for the expected layout)."
            )


def load_package_categories(filename: str) -> List[Dict]:
    """Read a category table shipped in ``mask2former/data/metadata/``.

    Returns:
        list of dicts with at least "id" and "name" (and "isthing", "color" where known).
    """
    with open(os.path.join(_METADATA_DIR, filename)) as f:
        return json.load(f)


def panoptic_category_metadata(categories: List[Dict]) -> Dict:
    """Metadata fields in the convention of ``coco_2017_*_panoptic_with_sem_seg``.

    Every category (thing or stuff) gets one contiguous id, its position in ``categories``;
    ``stuff_classes`` lists all categories (the semantic classes) and ``thing_classes`` only
    the things. ``thing_dataset_id_to_contiguous_id`` maps the things;
    ``stuff_dataset_id_to_contiguous_id`` maps *every* category, things included, so that the
    semantic-segmentation evaluator can translate any predicted label (a segment is a thing
    when its category is in the thing map).

    Args:
        categories: dicts with "id", "name", "isthing" and optionally "color".
    """
    colors = [c.get("color", _default_color(i)) for i, c in enumerate(categories)]
    return {
        "thing_classes": [c["name"] for c in categories if c["isthing"]],
        "thing_colors": [col for c, col in zip(categories, colors) if c["isthing"]],
        "stuff_classes": [c["name"] for c in categories],
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def _default_color(index: int) -> List[int]:
    """A deterministic, well spread colour for category ``index``."""
    return [(index * 67 + 41) % 256, (index * 137 + 89) % 256, (index * 211 + 17) % 256]


class FileCategoryMetadata(Metadata):
    """Metadata whose category fields (:data:`CATEGORY_FIELDS`) come from the data set's files.

    The fields are computed by ``category_loader`` (a callable returning a dict of them) on the
    first access to any of them, so registering touches no file. When the files are missing,
    the access raises :class:`DatasetFilesMissingError` saying how to prepare them.
    """

    def __getattr__(self, key):
        loader = self.__dict__.get("category_loader")
        if (
            key in CATEGORY_FIELDS
            and loader is not None
            and "_categories_loaded" not in self.__dict__
        ):
            fields = loader()
            self.__dict__["_categories_loaded"] = True
            for field, value in fields.items():
                setattr(self, field, value)
            return getattr(self, key)
        return super().__getattr__(key)

    def as_dict(self):
        """All metadata, category fields included (loading them if needed)."""
        for field in CATEGORY_FIELDS:
            self.get(field)
        out = super().as_dict()
        out.pop("_categories_loaded", None)
        out.pop("category_loader", None)
        return out


def set_file_category_metadata(
    name: str, category_loader: Callable[[], Dict], **fields
) -> FileCategoryMetadata:
    """Register ``name``'s metadata with lazily loaded category fields plus ``fields``."""
    meta = FileCategoryMetadata(name=name, category_loader=category_loader)
    MetadataCatalog[name] = meta
    meta.set(**fields)
    return meta


def register_metadata_categories(name: str, categories: List[Dict]) -> Metadata:
    """Register ``name``'s metadata from a class table, replacing any earlier metadata.

    For a model without a registered data set (e.g. one converted from Hugging Face): the
    fields of :func:`panoptic_category_metadata`, with each category's "id" used as its
    data set id.

    Args:
        name: metadata name; must not be a registered data set.
        categories: dicts with "id", "name", "isthing" and optionally "color", in contiguous
            order.

    Raises:
        ValueError: ``name`` is a registered data set, whose metadata must not be replaced.
    """
    if name in DatasetCatalog.list():
        raise ValueError(
            f"Cannot register class metadata under '{name}': it is a registered data set. "
            "Choose another name."
        )
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    metadata = MetadataCatalog.get(name)
    metadata.set(**panoptic_category_metadata(categories))
    return metadata


def register_metadata_file(path: str) -> str:
    """Register the class table of a JSON file; return the metadata name.

    The file holds ``{"name": str, "categories": [{"id", "name", "isthing"}, ...]}``, as
    ``tools/convert-hf-to-d2.py`` writes it (DATASETS.METADATA_FILE).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not such a table, or names a registered data set.
    """
    table = read_json(path, "Metadata file (DATASETS.METADATA_FILE)")
    categories = table.get("categories") if isinstance(table, dict) else None
    if not isinstance(table, dict) or not isinstance(table.get("name"), str) or not categories:
        raise ValueError(
            f"Metadata file '{path}' must hold an object with a 'name' and a non-empty list "
            "of 'categories' (each with id, name, isthing)."
        )
    missing = [
        index
        for index, category in enumerate(categories)
        if not {"id", "name", "isthing"} <= set(category)
    ]
    if missing:
        raise ValueError(
            f"Metadata file '{path}': categories {missing[:10]} lack one of id, name, isthing."
        )
    register_metadata_categories(table["name"], categories)
    return table["name"]
