"""Check a registered data set's files before training.

Command line (``datasets/check_dataset.py`` is the same)::

    python -m mask2former.data.check DATASET_NAME [DATASET_NAME ...] [--write-exclude FILE]

Every image and annotation file that the data set's registration names is read, in parallel over
worker processes and with the readers the dataset mappers use. The problems are reported per
kind, with file names and counts, then summed up in a table; the exit status is 1 when there
is a problem (2 for a usage error). ``--write-exclude FILE`` writes the ids of the images with
problems, for ``DATASETS.EXCLUDE_FILE`` (:mod:`mask2former.data.exclude`).

A video data set (YouTube-VIS style: one dataset dict per video, its frames in ``file_names``)
is checked frame by frame with the same rules, each frame against the video's height and width
and each per-frame segmentation against the frame; a problem of a frame is a problem of its
video, which the report counts and ``--write-exclude`` lists by its video id (or its frame
folder, :mod:`mask2former.data.records`).

What is checked (:data:`PROBLEM_KINDS` names each kind):

- images (a video's frames): missing, unreadable (truncated, not an image), or of another size
  than the annotation's (the video's) height and width;
- instance annotations (a video's: each frame's), from the COCO (YouTube-VIS) JSON that the
  metadata names (``json_file``) when there is one, else from the loaded dataset dicts: an
  empty segmentation, a degenerate polygon (fewer than 3 points, zero area, or too thin to
  cover a pixel) or an RLE that cannot be decoded, polygons that cover no pixel of the image
  (they may reach beyond it) or an RLE of another size, a category id that the annotation
  file's categories lack;
- videos: no frames, a ``length`` other than the number of frames, or an annotation whose
  per-frame segmentations are not one per frame;
- panoptic PNGs: missing, unreadable, of another size than the image, holding segment ids that
  the JSON's segments_info lacks, or the reverse;
- semantic PNGs: missing, unreadable, of another size than the image, holding values that are
  neither a class (0 to ``len(stuff_classes) - 1``) nor the ignore label.

A registration whose loader fails (e.g. Detectron2's COCO loader on an unknown category id) is
reported as such, and its images and instance annotations are still checked from the JSON.
"""

import argparse
import difflib
import functools
import importlib
import json
import logging
import multiprocessing
import os
import runpy
import sys
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Optional,
    Tuple,
    Union,
)

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from panopticapi.utils import rgb2id

from .exclude import write_exclude_file
from .preparation.progress import progress
from .records import is_video_record, record_id, record_path

__all__ = [
    "PROBLEM_KINDS",
    "DatasetReport",
    "Problem",
    "check_dataset",
    "exclude_entries",
    "format_reports",
    "main",
]

logger = logging.getLogger(__name__)

# Problem kind -> what it means, in the order of the reports.
PROBLEM_KINDS: Dict[str, str] = {
    "dataset_unloadable": "the data set's loader fails",
    "image_missing": "image missing",
    "image_unreadable": "image unreadable",
    "image_size_mismatch": "image of another size than the annotation says",
    "instance_empty": "instance annotation with an empty segmentation",
    "instance_degenerate": "instance annotation with a degenerate polygon or RLE",
    "instance_out_of_image": "instance annotation outside the image",
    "instance_unknown_category": "instance annotation with an unknown category id",
    "panoptic_missing": "panoptic PNG missing",
    "panoptic_unreadable": "panoptic PNG unreadable",
    "panoptic_size_mismatch": "panoptic PNG of another size than the image",
    "panoptic_unknown_segment": "panoptic PNG with segment ids absent from the JSON",
    "panoptic_segment_not_in_png": "panoptic JSON segments absent from the PNG",
    "semantic_missing": "semantic PNG missing",
    "semantic_unreadable": "semantic PNG unreadable",
    "semantic_size_mismatch": "semantic PNG of another size than the image",
    "semantic_unknown_value": "semantic PNG with values outside the classes and the ignore label",
    "video_frame_count": "video annotation or length that does not match the video's frames",
}
# Ids or values quoted in one problem's detail.
_QUOTED_VALUES = 10


@dataclass(frozen=True)
class Problem:
    """One problem found in a data set.

    Attributes:
        kind: a key of :data:`PROBLEM_KINDS`.
        file_name: the file with the problem (for an instance annotation, its image or frame;
            for a video's annotation, the video's frame folder).
        detail: what is wrong, for people.
        image: the image file of the sample concerned, a video's frame folder; None for a
            problem of the data set.
        image_id: the sample's image id (a video's video id), when the data set has one.
    """

    kind: str
    file_name: str
    detail: str
    image: Optional[str] = None
    image_id: Optional[Any] = None


@dataclass
class DatasetReport:
    """The problems of one registered data set.

    Attributes:
        name: the registered name.
        num_images: the samples checked: images, or videos when ``unit`` is "video".
        problems: what was found, sorted by kind and file.
        unit: what a sample is, "image" or "video".
    """

    name: str
    num_images: int
    problems: List[Problem] = field(default_factory=list)
    unit: str = "image"

    def counts(self) -> Dict[str, int]:
        """Problem kind -> number of problems, in :data:`PROBLEM_KINDS` order."""
        counts = dict.fromkeys(PROBLEM_KINDS, 0)
        for problem in self.problems:
            counts[problem.kind] += 1
        return {kind: n for kind, n in counts.items() if n}

    def bad_images(self) -> Dict[str, List[Problem]]:
        """Image file (a video's frame folder) -> its problems, for the samples with a
        problem."""
        found: Dict[str, List[Problem]] = {}
        for problem in self.problems:
            if problem.image is not None:
                found.setdefault(problem.image, []).append(problem)
        return found


@dataclass
class _Sample:
    """What is checked of one image: the image and the annotation files that describe it."""

    image: str
    image_id: Optional[Any] = None
    height: Optional[int] = None
    width: Optional[int] = None
    annotations: Optional[List[Dict]] = None
    pan_seg: Optional[str] = None
    segment_ids: List[int] = field(default_factory=list)
    sem_seg: Optional[str] = None


@dataclass
class _Video:
    """What is checked of one video: its frames, each with the video's size and the frame's
    annotations (None without ground truth)."""

    folder: str
    video_id: Optional[Any]
    frames: List[_Sample]


@dataclass(frozen=True)
class _Rules:
    """What a data set's annotations may hold.

    Attributes:
        category_ids: the valid instance category ids, or None when unknown.
        num_classes: the number of semantic classes, or None when unknown.
        ignore_label: the semantic label of unlabeled pixels.
    """

    category_ids: Optional[FrozenSet[int]]
    num_classes: Optional[int]
    ignore_label: int


def _error_text(error: Exception) -> str:
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _quoted(values: Iterable) -> str:
    values = sorted(values)
    shown = ", ".join(str(v) for v in values[:_QUOTED_VALUES])
    return shown + (f", ... ({len(values)} in all)" if len(values) > _QUOTED_VALUES else "")


def _read(path: str, format: Optional[str], add: Callable, missing: str, unreadable: str):
    """The image at ``path`` as the dataset mappers read it, or None after reporting why not."""
    if not os.path.isfile(path):
        add(missing, path, "no such file")
        return None
    try:
        return utils.read_image(path, format=format)
    # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError, ... on broken
    # files: every exception means the file cannot be used
    except Exception as error:
        add(unreadable, path, _error_text(error))
        return None


def _polygon_problem(polygon: Any) -> Optional[Tuple[str, str]]:
    """(kind, detail) when one polygon cannot be rasterised: Detectron2's COCO loader drops
    polygons of fewer than 3 points without saying which."""
    if not isinstance(polygon, list):
        return (
            "instance_degenerate",
            f"a polygon given as {type(polygon).__name__}, not as a list [x0, y0, x1, y1, ...]",
        )
    if len(polygon) < 6 or len(polygon) % 2:
        return "instance_degenerate", f"a polygon of {len(polygon)} coordinates (3 x, y needed)"
    try:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        return "instance_degenerate", "a polygon with coordinates that are not numbers"
    if not np.isfinite(points).all():
        return "instance_degenerate", "a polygon with non-finite coordinates"
    x, y = points[:, 0], points[:, 1]
    if float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) == 0.0:
        return "instance_degenerate", "a polygon of zero area"
    return None


def _polygons_problem(polygons: List, size: Optional[Tuple[int, int]]) -> Optional[Tuple]:
    """(kind, detail) of what is wrong with an annotation's polygons, or None.

    Polygons may reach beyond the image (the mask is clipped to it, as for shapes at the
    border); an annotation is out of the image when none of its pixels is inside.
    """
    if not any(polygons):
        return "instance_empty", f"the segmentation is {polygons}"
    for polygon in polygons:
        problem = _polygon_problem(polygon)
        if problem is not None:
            return problem
    if size is None:
        return None
    height, width = size
    if int(mask_util.area(mask_util.merge(mask_util.frPyObjects(polygons, height, width)))):
        return None
    points = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons])
    low, high = points.min(axis=0), points.max(axis=0)
    if (low >= 0).all() and (high <= (width, height)).all():
        return "instance_degenerate", "polygons too thin to cover a single pixel"
    return (
        "instance_out_of_image",
        f"polygons spanning x {low[0]:g}..{high[0]:g}, y {low[1]:g}..{high[1]:g} cover no pixel "
        f"of the {width}x{height} image",
    )


def _segmentation_problem(
    segmentation: Any, size: Optional[Tuple[int, int]]
) -> Optional[Tuple[str, str]]:
    """(kind, detail) of what is wrong with a COCO segmentation, or None."""
    if segmentation is None:
        return "instance_empty", "no segmentation"
    if isinstance(segmentation, list):
        return _polygons_problem(segmentation, size)
    if isinstance(segmentation, dict):
        rle_size = list(segmentation.get("size") or [])
        if size is not None and rle_size != list(size):
            return (
                "instance_out_of_image",
                f"an RLE of size {rle_size} (height, width) for a {size[1]}x{size[0]} image",
            )
        try:
            rle = segmentation
            if isinstance(segmentation["counts"], list):
                rle = mask_util.frPyObjects(segmentation, *rle_size)
            area = int(mask_util.area(rle))
        # pycocotools raises TypeError, ValueError, KeyError, ... on malformed RLE
        except Exception as error:
            return "instance_degenerate", f"an RLE that cannot be decoded ({_error_text(error)})"
        if area == 0:
            return "instance_empty", "an RLE without a single pixel"
        return None
    return "instance_degenerate", f"a segmentation of type {type(segmentation).__name__}"


def _check_annotations(sample: _Sample, size, rules: _Rules, add: Callable) -> None:
    for annotation in sample.annotations or []:
        name = f"annotation {annotation['id']}" if "id" in annotation else "an annotation"
        category = annotation.get("category_id")
        if rules.category_ids is not None and category not in rules.category_ids:
            add(
                "instance_unknown_category",
                sample.image,
                f"{name}: category_id {category} is not one of the "
                f"{len(rules.category_ids)} categories of the annotation file",
            )
        problem = _segmentation_problem(annotation.get("segmentation"), size)
        if problem is not None:
            add(problem[0], sample.image, f"{name}: {problem[1]}")


def _check_size(kind: str, path: str, shape, size, add: Callable) -> None:
    if size is not None and tuple(shape[:2]) != tuple(size):
        add(kind, path, f"{shape[1]}x{shape[0]} pixels, the image {size[1]}x{size[0]}")


def _check_sample(sample: _Sample, rules: _Rules) -> List[Problem]:
    """Every problem of one sample (runs in the worker processes)."""
    found: List[Problem] = []

    def add(kind: str, file_name: str, detail: str) -> None:
        found.append(Problem(kind, file_name, detail, sample.image, sample.image_id))

    annotated_size = None
    if sample.height is not None and sample.width is not None:
        annotated_size = (sample.height, sample.width)
    image = _read(sample.image, "RGB", add, "image_missing", "image_unreadable")
    image_size = annotated_size if image is None else image.shape[:2]
    if image is not None and annotated_size is not None and image_size != annotated_size:
        add(
            "image_size_mismatch",
            sample.image,
            f"the image is {image_size[1]}x{image_size[0]} pixels, the annotation says "
            f"{annotated_size[1]}x{annotated_size[0]} (width x height)",
        )
    # polygons and RLE are in the annotation's frame
    _check_annotations(sample, annotated_size or image_size, rules, add)
    if sample.pan_seg is not None:
        pan_rgb = _read(sample.pan_seg, "RGB", add, "panoptic_missing", "panoptic_unreadable")
        if pan_rgb is not None:
            _check_size("panoptic_size_mismatch", sample.pan_seg, pan_rgb.shape, image_size, add)
            in_png = set(np.unique(rgb2id(pan_rgb)).tolist()) - {0}
            in_json = set(sample.segment_ids)
            if in_png - in_json:
                add(
                    "panoptic_unknown_segment",
                    sample.pan_seg,
                    f"segment ids {_quoted(in_png - in_json)} are in the PNG but not in the "
                    "segments_info of its JSON annotation",
                )
            if in_json - in_png:
                add(
                    "panoptic_segment_not_in_png",
                    sample.pan_seg,
                    f"segments {_quoted(in_json - in_png)} of its JSON segments_info have no "
                    "pixel in the PNG",
                )
    if sample.sem_seg is not None:
        labels = _read(sample.sem_seg, None, add, "semantic_missing", "semantic_unreadable")
        if labels is not None and labels.ndim != 2:
            add("semantic_unreadable", sample.sem_seg, f"{labels.shape[2]} channels instead of 1")
        elif labels is not None:
            _check_size("semantic_size_mismatch", sample.sem_seg, labels.shape, image_size, add)
            if rules.num_classes is not None:
                values = np.unique(labels).tolist()
                unknown = [
                    v for v in values if not 0 <= v < rules.num_classes and v != rules.ignore_label
                ]
                if unknown:
                    add(
                        "semantic_unknown_value",
                        sample.sem_seg,
                        f"values {_quoted(unknown)} are neither classes 0..{rules.num_classes - 1}"
                        f" nor the ignore label {rules.ignore_label}",
                    )
    return found


def _check_video(video: _Video, rules: _Rules) -> List[Problem]:
    """Every problem of one video's frames, as problems of the video."""
    return [
        replace(problem, image=video.folder, image_id=video.video_id)
        for frame in video.frames
        for problem in _check_sample(frame, rules)
    ]


def _check_item(item: Union[_Sample, _Video], rules: _Rules) -> List[Problem]:
    """Every problem of an image or a video (runs in the worker processes)."""
    return _check_video(item, rules) if isinstance(item, _Video) else _check_sample(item, rules)


def _sample_from_record(record: Dict) -> _Sample:
    return _Sample(
        image=record["file_name"],
        image_id=record.get("image_id"),
        height=record.get("height"),
        width=record.get("width"),
        annotations=record.get("annotations"),
        pan_seg=record.get("pan_seg_file_name"),
        segment_ids=[s["id"] for s in record.get("segments_info", [])],
        sem_seg=record.get("sem_seg_file_name"),
    )


def _read_json(json_file: str, problems: List[Problem]) -> Optional[Any]:
    """The content of an annotation JSON, or None (with a problem if it cannot be read)."""
    try:
        with open(json_file) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        problems.append(Problem("dataset_unloadable", json_file, _error_text(error)))
        return None


def _is_coco_instances(content: Any) -> bool:
    """Whether ``content`` is a COCO instance file with file names (not e.g. LVIS's)."""
    images = content.get("images") if isinstance(content, dict) else None
    return bool(images) and "file_name" in images[0] and "annotations" in content


def _is_ytvis(content: Any) -> bool:
    """Whether ``content`` is a YouTube-VIS file (a list of videos)."""
    return isinstance(content, dict) and isinstance(content.get("videos"), list)


def _metadata_field(metadata, key: str) -> Any:
    """A metadata field, or None; fields read lazily from a data set's files may fail to load
    (the loader's failure is reported already)."""
    try:
        return metadata.get(key)
    except (OSError, ValueError, KeyError):
        return None


def _images(
    records: List[Dict], content: Optional[Dict], image_root: Optional[str]
) -> Tuple[List[_Sample], Optional[FrozenSet[int]]]:
    """The samples of an image data set, and its category ids when the COCO JSON ``content``
    gives them (None: the records' contiguous ids)."""
    samples = {os.path.normpath(r["file_name"]): _sample_from_record(r) for r in records}
    if not _is_coco_instances(content):
        return list(samples.values()), None
    # the raw annotations: the loader drops or rejects the broken ones
    by_image = defaultdict(list)
    for annotation in content["annotations"]:
        by_image[annotation.get("image_id")].append(annotation)
    for sample in samples.values():
        sample.annotations = None  # contiguous ids; replaced from the JSON below
    for image in content["images"]:
        path = os.path.normpath(os.path.join(image_root, image["file_name"]))
        sample = samples.setdefault(path, _Sample(path, image.get("id")))
        sample.height = image.get("height", sample.height)
        sample.width = image.get("width", sample.width)
        sample.annotations = by_image.get(image.get("id"), [])
    category_ids = frozenset(c["id"] for c in content.get("categories", []))
    return list(samples.values()), category_ids


def _video_from_record(record: Dict) -> _Video:
    annotations = record.get("annotations")
    frames = [
        _Sample(
            image=path,
            height=record.get("height"),
            width=record.get("width"),
            annotations=None if annotations is None else annotations[t],
        )
        for t, path in enumerate(record["file_names"])
    ]
    return _Video(record_path(record), record_id(record), frames)


def _video_from_json(
    video: Dict,
    annotations: Optional[List[Dict]],
    image_root: str,
    add: Callable[[_Video, str], None],
) -> _Video:
    """A video of a YouTube-VIS JSON, its frames holding the raw per-frame segmentations of
    ``annotations`` (None without ground truth); ``add(video, detail)`` reports a video whose
    frames do not add up."""
    paths = [os.path.normpath(os.path.join(image_root, n)) for n in video.get("file_names", [])]
    checked = _Video(record_path({"file_names": paths}), video.get("id"), [])
    for path in paths:
        frame = _Sample(path, height=video.get("height"), width=video.get("width"))
        frame.annotations = None if annotations is None else []
        checked.frames.append(frame)
    if not paths:
        add(checked, f"video {checked.video_id} has no file_names")
    elif video.get("length", len(paths)) != len(paths):
        add(
            checked,
            f"video {checked.video_id} has length {video['length']} but {len(paths)} frames",
        )
    for annotation in annotations or []:
        segmentations = annotation.get("segmentations")
        if not isinstance(segmentations, list) or len(segmentations) != len(paths):
            given = (
                f"{len(segmentations)} entries"
                if isinstance(segmentations, list)
                else type(segmentations).__name__
            )
            add(
                checked,
                f"annotation {annotation.get('id')}: 'segmentations' is {given}, the video has "
                f"{len(paths)} frames (one entry per frame, null where the object is absent)",
            )
            continue
        for frame, segmentation in zip(checked.frames, segmentations):
            if segmentation is not None:
                entry = {key: annotation.get(key) for key in ("id", "category_id")}
                frame.annotations.append(dict(entry, segmentation=segmentation))
    return checked


def _videos(
    records: List[Dict],
    content: Optional[Dict],
    image_root: Optional[str],
    metadata,
    problems: List[Problem],
) -> Tuple[List[_Video], Optional[FrozenSet[int]]]:
    """The videos of a video data set, and its category ids when the YouTube-VIS JSON
    ``content`` is read (None: the records' contiguous ids)."""
    if not _is_ytvis(content):
        return [_video_from_record(r) for r in records], None

    def add(video: _Video, detail: str) -> None:
        kind = "video_frame_count"
        problems.append(Problem(kind, video.folder, detail, video.folder, video.video_id))

    by_video = defaultdict(list)
    for annotation in content.get("annotations") or []:
        by_video[annotation.get("video_id")].append(annotation)
    with_truth = "annotations" in content
    videos = [
        _video_from_json(video, by_video[video.get("id")] if with_truth else None, image_root, add)
        for video in content["videos"]
    ]
    # the ids the loader maps: the registered metadata's, else the JSON's categories
    mapping = _metadata_field(metadata, "thing_dataset_id_to_contiguous_id")
    ids = mapping.keys() if mapping else (c.get("id") for c in content.get("categories", []))
    return videos, frozenset(ids)


def _collect(name: str) -> Tuple[List[Union[_Sample, _Video]], _Rules, List[Problem], str]:
    """The samples (images or videos) of a registered data set, its rules, its data-set-level
    problems, and what a sample is ("image" or "video")."""
    metadata = MetadataCatalog.get(name)
    problems: List[Problem] = []
    try:
        records = DatasetCatalog.get(name)
    # a registration's loader may raise anything; the raw annotation files are still checked
    except Exception as error:
        problems.append(Problem("dataset_unloadable", name, _error_text(error)))
        records = []
    json_file, image_root = metadata.get("json_file"), metadata.get("image_root")
    content = _read_json(json_file, problems) if json_file and image_root else None
    video = metadata.get("evaluator_type", None) == "ytvis" or _is_ytvis(content)
    video = video or bool(records and is_video_record(records[0]))
    if video:
        samples, category_ids = _videos(records, content, image_root, metadata, problems)
    else:
        samples, category_ids = _images(records, content, image_root)
    if category_ids is None:
        thing_classes = _metadata_field(metadata, "thing_classes")
        category_ids = frozenset(range(len(thing_classes))) if thing_classes else None
    stuff_classes = _metadata_field(metadata, "stuff_classes")
    rules = _Rules(
        category_ids=category_ids,
        num_classes=len(stuff_classes) if stuff_classes else None,
        ignore_label=metadata.get("ignore_label", 255),
    )
    return samples, rules, problems, "video" if video else "image"


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _map_in_workers(func: Callable, items: List, num_workers: int) -> Iterator:
    """``func`` over ``items`` in ``num_workers`` processes (0: in this one), in any order."""
    if num_workers == 0 or len(items) < 2:
        yield from map(func, items)
        return
    chunksize = max(1, min(32, len(items) // (4 * num_workers)))
    with multiprocessing.get_context().Pool(num_workers) as pool:
        yield from pool.imap_unordered(func, items, chunksize=chunksize)


def check_dataset(
    name: str, *, num_workers: Optional[int] = None, show_progress: bool = True
) -> DatasetReport:
    """Check the files of the registered data set ``name`` (see the module docstring).

    Args:
        name: a name registered in Detectron2's ``DatasetCatalog``.
        num_workers: worker processes; default one per CPU core; 0 checks in this process.
        show_progress: show a tqdm progress bar.

    Returns:
        the report, problems sorted by kind and file.
    """
    samples, rules, problems, unit = _collect(name)
    workers = _default_workers() if num_workers is None else num_workers
    results = _map_in_workers(functools.partial(_check_item, rules=rules), samples, workers)
    for found in progress(results, f"checking {name}", len(samples), show_progress):
        problems.extend(found)
    order = {kind: i for i, kind in enumerate(PROBLEM_KINDS)}
    problems.sort(key=lambda p: (order[p.kind], p.file_name, p.detail))
    return DatasetReport(name, len(samples), problems, unit)


def _table(rows: List[List[str]]) -> List[str]:
    """A Markdown table (first row: header; numbers right-aligned)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            rules = ["-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
            lines.append("| " + " | ".join(rules) + " |")
    return lines


def format_reports(reports: List[DatasetReport], max_listed: int = 20) -> str:
    """The reports as text: per data set and problem kind, the files, then a summary table.

    Args:
        max_listed: files listed per problem kind and data set (0: all).
    """
    lines = []
    for report in reports:
        bad = len(report.bad_images())
        lines.append(
            f"{report.name}: {report.num_images} {report.unit}s checked, {bad} with problems, "
            f"{len(report.problems)} problems."
        )
        for kind, count in report.counts().items():
            lines.append(f"  {PROBLEM_KINDS[kind]} ({count}):")
            listed = [p for p in report.problems if p.kind == kind]
            shown = listed if max_listed <= 0 else listed[:max_listed]
            lines += [f"    {p.file_name}: {p.detail}" for p in shown]
            if len(shown) < len(listed):
                lines.append(f"    ... and {len(listed) - len(shown)} more (--max-listed 0)")
    kinds = [k for k in PROBLEM_KINDS if any(k in r.counts() for r in reports)]
    rows = [["problem"] + [r.name for r in reports]]
    rows += [[PROBLEM_KINDS[k]] + [str(r.counts().get(k, 0)) for r in reports] for k in kinds]
    units = " or ".join(sorted({f"{r.unit}s" for r in reports}, key=len))
    rows.append([f"{units} checked"] + [str(r.num_images) for r in reports])
    rows.append([f"{units} with problems"] + [str(len(r.bad_images())) for r in reports])
    lines += ["", "Summary:", *_table(rows)]
    return "\n".join(lines)


def exclude_entries(reports: List[DatasetReport]) -> List[Tuple[str, str]]:
    """(image id or file, comment) of every image with a problem, for an exclude file; for a
    video, (video id or frame folder, comment)."""
    entries: Dict[str, Tuple[str, List[str]]] = {}
    for report in reports:
        for image, problems in report.bad_images().items():
            image_id = problems[0].image_id
            entry = str(image_id) if image_id is not None else image
            kinds = entries.setdefault(entry, (image, []))[1]
            kinds += [PROBLEM_KINDS[p.kind] for p in problems if PROBLEM_KINDS[p.kind] not in kinds]
    return [(entry, f"{image}: {'; '.join(kinds)}") for entry, (image, kinds) in entries.items()]


def unregistered_dataset_message(name: str) -> Optional[str]:
    """None when data set ``name`` is registered; else a message that suggests close names and
    how to register one (the ``--import`` option of this module's and other tools)."""
    registered = DatasetCatalog.list()
    if name in registered:
        return None
    close = difflib.get_close_matches(name, registered, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    return (
        f"data set {name!r} is not registered.{hint} Register your own with --import "
        "MODULE_OR_FILE (see datasets/README.md)."
    )


def add_import_argument(parser: argparse.ArgumentParser) -> None:
    """The tools' ``--import MODULE_OR_FILE`` option (repeatable, into ``args.imports``); run
    them with :func:`import_registrations` before looking data sets up."""
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a module (or run a .py file) that registers your own data sets first",
    )


def import_registrations(modules_or_files: Iterable[str]) -> None:
    """Run registration modules (``pkg.module``) or files (``path/to/file.py``), in order
    (the values of :func:`add_import_argument`'s option)."""
    for module_or_file in modules_or_files:
        if module_or_file.endswith(".py"):
            runpy.run_path(module_or_file, run_name="__registration__")
        else:
            importlib.import_module(module_or_file)


def main(argv: Optional[List[str]] = None) -> int:
    """The command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(
        description="Check the images (video frames) and annotation files of registered data sets.",
        epilog="Exit status: 0 no problem, 1 problems found, 2 usage error.",
    )
    parser.add_argument("names", nargs="+", metavar="DATASET_NAME", help="registered data sets")
    parser.add_argument(
        "--workers",
        type=int,
        default=_default_workers(),
        help="worker processes (default: one per CPU core; 0: no worker process)",
    )
    parser.add_argument(
        "--write-exclude",
        metavar="FILE",
        help="write the ids of the images (videos) with problems to FILE, for "
        "DATASETS.EXCLUDE_FILE",
    )
    parser.add_argument(
        "--max-listed", type=int, default=20, help="files listed per problem kind (0: all)"
    )
    add_import_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    import_registrations(args.imports)
    for name in args.names:
        problem = unregistered_dataset_message(name)
        if problem:
            parser.error(problem)
    reports = [check_dataset(name, num_workers=args.workers) for name in args.names]
    logger.info("%s", format_reports(reports, args.max_listed))
    if args.write_exclude:
        entries = exclude_entries(reports)
        write_exclude_file(args.write_exclude, entries)
        logger.info("Wrote %d images to %s.", len(entries), args.write_exclude)
    return 1 if any(report.problems for report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
