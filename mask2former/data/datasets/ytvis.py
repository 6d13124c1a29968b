"""YouTube-VIS video instance segmentation: the JSON loader and the registrations.

Names, rooted at ``$DETECTRON2_DATASETS`` (evaluator_type "ytvis"; the layout of the challenge
downloads)::

    ytvis_2019_{train,val,test}   ytvis_2019/{train,valid,test}/JPEGImages/<video>/<frame>.jpg
                                  ytvis_2019/{train,valid,test}.json
    ytvis_2021_{train,val,test}   ytvis_2021/{train,valid,test}/JPEGImages/<video>/<frame>.jpg
                                  ytvis_2021/{train,valid,test}/instances.json

The val and test splits have no ground truth: their results are scored by the challenge server.

Your own data in the YouTube-VIS JSON format: :func:`register_ytvis_instances`.

A loaded data set has one dict per *video* (``load_ytvis_json``)::

    {"video_id": int, "file_names": [L frame paths], "height": int, "width": int,
     "length": L, "annotations": [L lists, one per frame, of {"id" (the track id),
     "category_id" (contiguous), "iscrowd", "bbox", "bbox_mode", "segmentation"}]}

A frame where an instance is absent has no entry for it; a split without ground truth has no
"annotations".
"""

import os
from typing import Dict, List, Optional, Sequence

import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ...utils.json_io import read_json
from .catalog_utils import _default_color, get_datasets_root, require_paths

__all__ = [
    "YTVIS_2019_CLASSES",
    "YTVIS_2021_CLASSES",
    "load_ytvis_json",
    "register_ytvis_instances",
    "register_all_ytvis",
    "ytvis_metadata",
]

# The 40 classes of each release, in category id order 1..40.
YTVIS_2019_CLASSES = (
    "person", "giant_panda", "lizard", "parrot", "skateboard", "sedan", "ape", "dog", "snake",
    "monkey", "hand", "rabbit", "duck", "cat", "cow", "fish", "train", "horse", "turtle", "bear",
    "motorbike", "giraffe", "leopard", "fox", "deer", "owl", "surfboard", "airplane", "truck",
    "zebra", "tiger", "elephant", "snowboard", "boat", "shark", "mouse", "frog", "eagle",
    "earless_seal", "tennis_racket",
)  # fmt: skip
YTVIS_2021_CLASSES = (
    "airplane", "bear", "bird", "boat", "car", "cat", "cow", "deer", "dog", "duck",
    "earless_seal", "elephant", "fish", "flying_disc", "fox", "frog", "giant_panda", "giraffe",
    "horse", "leopard", "lizard", "monkey", "motorbike", "mouse", "parrot", "person", "rabbit",
    "shark", "skateboard", "snake", "snowboard", "squirrel", "surfboard", "tennis_racket",
    "tiger", "train", "truck", "turtle", "whale", "zebra",
)  # fmt: skip

_PREPARE_HINT = (
    "download YouTube-VIS 2019 or 2021 from its CodaLab challenge page (linked from "
    "https://youtube-vos.org/dataset/vis/) and unpack it so that "
    "DETECTRON2_DATASETS holds ytvis_2019/{train,valid,test}/JPEGImages with "
    "ytvis_2019/{train,valid,test}.json, and ytvis_2021/{train,valid,test}/JPEGImages with "
    "ytvis_2021/{train,valid,test}/instances.json"
)
_DEFAULT_HINT = "check the paths given when the data set was registered"
# registered split -> folder of the download
_SPLIT_FOLDERS = {"train": "train", "val": "valid", "test": "test"}


def ytvis_metadata(class_names: Sequence[str]) -> Dict:
    """Metadata of classes whose data set ids are 1..K in the order of ``class_names``."""
    return {
        "thing_classes": list(class_names),
        "thing_colors": [_default_color(i) for i in range(len(class_names))],
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(class_names))},
    }


def _read_ytvis_json(json_file: str) -> Dict:
    content = read_json(json_file, "YouTube-VIS annotation file")
    if not isinstance(content, dict) or not isinstance(content.get("videos"), list):
        raise ValueError(
            f"{json_file} is not in the YouTube-VIS format: it needs a 'videos' list (and "
            "'categories', plus 'annotations' where there is ground truth)."
        )
    return content


def _category_map(content: Dict, json_file: str, dataset_name: Optional[str]) -> Dict[int, int]:
    """Data set id -> contiguous id: the registered metadata's, else the JSON's categories in
    id order (then stored in the metadata of ``dataset_name``, as ``load_coco_json`` does)."""
    metadata = MetadataCatalog.get(dataset_name) if dataset_name else None
    if metadata is not None and metadata.get("thing_dataset_id_to_contiguous_id", None):
        return metadata.thing_dataset_id_to_contiguous_id
    categories = sorted(content.get("categories", []), key=lambda c: c["id"])
    if not categories:
        raise ValueError(
            f"{json_file} has no 'categories' and the data set's metadata gives no "
            "thing_dataset_id_to_contiguous_id: the class of an annotation is unknown."
        )
    mapping = {c["id"]: i for i, c in enumerate(categories)}
    if metadata is not None:
        metadata.set(
            thing_classes=[c["name"] for c in categories],
            thing_dataset_id_to_contiguous_id=mapping,
        )
    return mapping


def _frame_segmentation(segmentation, height: int, width: int):
    """A frame's segmentation as format 1 holds it: an uncompressed RLE (counts a list)
    becomes a compressed one; compressed RLE and polygons stay as they are."""
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return mask_util.frPyObjects(segmentation, height, width)
    return segmentation


def _frame_bbox(segmentation, height: int, width: int) -> List[float]:
    """[x, y, w, h] of a segmentation, for annotations without "bboxes"."""
    if isinstance(segmentation, list):
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    else:
        rle = segmentation
    return [float(v) for v in mask_util.toBbox(rle)]


def _video_annotations(
    ann: Dict, video: Dict, json_file: str, extra_keys: Sequence[str], category_map: Dict
) -> List[Optional[Dict]]:
    """One annotation (a track) as per-frame entries; None where it is absent."""
    length = video["length"]
    segmentations = ann.get("segmentations")
    bboxes = ann.get("bboxes")
    for key, values in (("segmentations", segmentations), ("bboxes", bboxes)):
        if (key == "segmentations" or values is not None) and (
            not isinstance(values, list) or len(values) != length
        ):
            got = len(values) if isinstance(values, list) else values
            raise ValueError(
                f"{json_file}: annotation {ann.get('id')} of video {video['id']} has "
                f"'{key}' of length {got}, but the video has {length} frames: each needs one "
                "entry per frame (null where the object is absent)."
            )
    if ann["category_id"] not in category_map:
        raise ValueError(
            f"{json_file}: annotation {ann.get('id')} has category_id {ann['category_id']}, "
            f"which is not among the categories {sorted(category_map)}."
        )
    height, width = video["height"], video["width"]
    frames: List[Optional[Dict]] = []
    for t in range(length):
        segmentation = segmentations[t]
        if segmentation is None or (bboxes is not None and bboxes[t] is None):
            frames.append(None)
            continue
        segmentation = _frame_segmentation(segmentation, height, width)
        bbox = bboxes[t] if bboxes is not None else _frame_bbox(segmentation, height, width)
        entry = {
            "id": ann["id"],
            "category_id": category_map[ann["category_id"]],
            "iscrowd": ann.get("iscrowd", 0),
            "bbox": bbox,
            "bbox_mode": BoxMode.XYWH_ABS,
            "segmentation": segmentation,
        }
        entry.update({key: ann[key] for key in extra_keys if key in ann})
        frames.append(entry)
    return frames


def load_ytvis_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    extra_annotation_keys: Optional[Sequence[str]] = None,
) -> List[Dict]:
    """Read a YouTube-VIS JSON into one dataset dict per video (see the module docstring).

    Args:
        json_file: the annotation file: {"videos": [{"id", "width", "height", "length",
            "file_names"}], "annotations": [{"id", "video_id", "category_id", "iscrowd",
            "segmentations", "bboxes", "areas"}] (absent without ground truth),
            "categories": [{"id", "name"}]}. "segmentations" and "bboxes" have one entry per
            frame, null where the object is absent; "bboxes" may be left out.
        image_root: folder the videos' ``file_names`` are relative to.
        dataset_name: the registered name; its metadata's ``thing_dataset_id_to_contiguous_id``
            maps the category ids (when it has none, the JSON's categories in id order do,
            and are stored in the metadata).
        extra_annotation_keys: keys of an annotation copied into each of its frame entries.

    Returns:
        one dict per video, in the JSON's order.

    Raises:
        FileNotFoundError: ``json_file`` does not exist.
        ValueError: the file is not JSON or not in the YouTube-VIS format, or an annotation's
            per-frame lists do not match its video's length.
    """
    content = _read_ytvis_json(json_file)
    category_map = _category_map(content, json_file, dataset_name)
    has_ground_truth = "annotations" in content
    by_video: Dict[int, List[Dict]] = {}
    for ann in content.get("annotations") or []:
        by_video.setdefault(ann["video_id"], []).append(ann)
    unknown = set(by_video) - {video["id"] for video in content["videos"]}
    if unknown:
        raise ValueError(f"{json_file}: annotations refer to unknown videos {sorted(unknown)}.")

    dicts = []
    for video in content["videos"]:
        length = video.get("length", len(video["file_names"]))
        if len(video["file_names"]) != length:
            raise ValueError(
                f"{json_file}: video {video['id']} has length {length} but "
                f"{len(video['file_names'])} file_names."
            )
        video = dict(video, length=length)
        record = {
            "video_id": video["id"],
            "file_names": [os.path.join(image_root, name) for name in video["file_names"]],
            "height": video["height"],
            "width": video["width"],
            "length": length,
        }
        if has_ground_truth:
            frames: List[List[Dict]] = [[] for _ in range(length)]
            for ann in by_video.get(video["id"], []):
                extra = extra_annotation_keys or ()
                for t, entry in enumerate(
                    _video_annotations(ann, video, json_file, extra, category_map)
                ):
                    if entry is not None:
                        frames[t].append(entry)
            record["annotations"] = frames
        dicts.append(record)
    return dicts


def register_ytvis_instances(
    name: str,
    metadata: Dict,
    json_file: str,
    image_root: str,
    *,
    prepare_hint: str = _DEFAULT_HINT,
) -> None:
    """Register a data set in the YouTube-VIS JSON format (evaluator_type "ytvis").

    Args:
        name: new data set name.
        metadata: may be empty (then ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``
            are read from the JSON's categories when the data set is loaded); e.g.
            :func:`ytvis_metadata`.
        json_file: the YouTube-VIS JSON (see :func:`load_ytvis_json`).
        image_root: folder the videos' ``file_names`` are relative to.
        prepare_hint: how to get the files, in the error raised when they are missing.
    """

    def load():
        require_paths(name, [json_file, image_root], prepare_hint)
        return load_ytvis_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="ytvis", **metadata
    )


def register_all_ytvis(datasets_root: str) -> None:
    """Register ``ytvis_{2019,2021}_{train,val,test}`` rooted at ``datasets_root``."""
    for year, classes in (("2019", YTVIS_2019_CLASSES), ("2021", YTVIS_2021_CLASSES)):
        root = os.path.join(datasets_root, f"ytvis_{year}")
        for split, folder in _SPLIT_FOLDERS.items():
            if year == "2019":
                json_file = os.path.join(root, f"{folder}.json")
            else:
                json_file = os.path.join(root, folder, "instances.json")
            register_ytvis_instances(
                f"ytvis_{year}_{split}",
                ytvis_metadata(classes),
                json_file,
                os.path.join(root, folder, "JPEGImages"),
                prepare_hint=_PREPARE_HINT,
            )


register_all_ytvis(get_datasets_root())
