"""ADE20K (SceneParsing, 150 classes) conversions: semantic, panoptic and instance layouts.

Inputs, under ``ADEChallengeData2016/``:

- ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``
  (semantic, 0 = unlabeled, 1..150 = class) from the SceneParsing release;
- ``annotations_instance/{training,validation}/*.png`` from the ADE20K instance
  segmentation release (R channel: instance-challenge category 1..100, G channel: instance
  index, 0 = none);
- the instance release's category mapping, ``categoryMapping.txt`` (also distributed as
  ``ade20k_instance_catid_mapping.txt``): a header line, then one
  ``<instance id> <scene-parsing id> <full ADE id>`` row per thing class.

The thing classes (100) are the scene-parsing classes named in the mapping; the other 50 are
stuff. Category ids in the written JSON files are scene-parsing ids minus one (0..149), equal
to the labels of ``annotations_detectron2``.
"""

import json
import os
from typing import Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES
from panopticapi.utils import id2rgb
from PIL import Image

from ..datasets.catalog_utils import DatasetFilesMissingError
from .inputs import require_input
from .progress import progress

__all__ = [
    "ADE20K_SPLITS",
    "MAPPING_FILE_NAMES",
    "convert_ade20k_sem_seg",
    "read_instance_category_mapping",
    "ade20k_panoptic_categories",
    "ade20k_panoptic_annotation",
    "convert_ade20k_panoptic",
    "convert_ade20k_instance",
]

ADE20K_SPLITS = (("train", "training"), ("val", "validation"))
MAPPING_FILE_NAMES = ("categoryMapping.txt", "ade20k_instance_catid_mapping.txt")
LABEL_DIVISOR = 1000


def _image_stems(ade_root: str, dirname: str) -> List[str]:
    image_dir = os.path.join(ade_root, "images", dirname)
    require_input(
        image_dir,
        "ADE20K images",
        "Download ADEChallengeData2016.zip (SceneParsing) and unzip it into DETECTRON2_DATASETS.",
    )
    return sorted(os.path.splitext(f)[0] for f in os.listdir(image_dir) if f.endswith(".jpg"))


def convert_ade20k_sem_seg(ade_root: str, *, show_progress: bool = True) -> Dict[str, int]:
    """Write ``annotations_detectron2/{split}/*.png``: label - 1, unlabeled (0) -> 255."""
    counts = {}
    for _split, dirname in ADE20K_SPLITS:
        in_dir = os.path.join(ade_root, "annotations", dirname)
        require_input(in_dir, "ADE20K semantic annotations", "Unzip ADEChallengeData2016.zip.")
        out_dir = os.path.join(ade_root, "annotations_detectron2", dirname)
        os.makedirs(out_dir, exist_ok=True)
        files = sorted(f for f in os.listdir(in_dir) if f.endswith(".png"))
        for name in progress(files, f"ade20k sem_seg {dirname}", len(files), show_progress):
            labels = np.asarray(Image.open(os.path.join(in_dir, name)), dtype=np.uint8)
            Image.fromarray(labels - np.uint8(1)).save(os.path.join(out_dir, name))
        counts[dirname] = len(files)
    return counts


def read_instance_category_mapping(ade_root: str) -> Dict[int, int]:
    """Instance-challenge category (1..100) -> scene-parsing class (1..150).

    Reads the first of :data:`MAPPING_FILE_NAMES` found in ``ade_root``.
    """
    for name in MAPPING_FILE_NAMES:
        path = os.path.join(ade_root, name)
        if os.path.isfile(path):
            break
    else:
        raise DatasetFilesMissingError(
            f"No ADE20K instance category mapping in {ade_root} (looked for "
            f"{', '.join(MAPPING_FILE_NAMES)}). Copy categoryMapping.txt from the ADE20K "
            "instance segmentation release (github.com/CSAILVision/placeschallenge, "
            "instancesegmentation/) into that folder."
        )
    mapping = {}
    with open(path) as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if len(fields) >= 2:
                mapping[int(fields[0])] = int(fields[1])
    if not mapping:
        raise ValueError(f"{path} has no '<instance id> <scene-parsing id> ...' rows.")
    return mapping


def ade20k_panoptic_categories(mapping: Dict[int, int]) -> List[Dict]:
    """The 150 classes with ``isthing`` from the instance mapping; id = class index - 1."""
    thing_ids = set(mapping.values())
    return [
        {
            "id": i,
            "name": name,
            "isthing": int(i + 1 in thing_ids),
            "color": [(i * 67 + 41) % 256, (i * 137 + 89) % 256, (i * 211 + 17) % 256],
        }
        for i, name in enumerate(ADE20K_SEM_SEG_CATEGORIES)
    ]


def _instances(instance_png: np.ndarray, mapping: Dict[int, int]) -> List[Tuple[int, np.ndarray]]:
    """(0-based scene-parsing category, bool mask) per instance of an instance PNG."""
    category_map = instance_png[..., 0]
    instance_map = instance_png[..., 1]
    out = []
    for index in np.unique(instance_map):
        if index == 0:
            continue
        mask = instance_map == index
        classes, counts = np.unique(category_map[mask], return_counts=True)
        category = int(classes[np.argmax(counts)])
        if category in mapping:
            out.append((mapping[category] - 1, mask))
    return out


def ade20k_panoptic_annotation(
    semantic: np.ndarray,
    instance_png: np.ndarray,
    mapping: Dict[int, int],
    categories: List[Dict],
) -> Tuple[np.ndarray, List[Dict]]:
    """Panoptic id map and segments of one image.

    Stuff segments come from the semantic map (classes that are not things); thing segments
    from the instance PNG and are painted over stuff. Thing-class pixels without an instance
    stay void (0).

    Args:
        semantic: (H, W) raw semantic labels (0 unlabeled, 1..150).
        instance_png: (H, W, 3) instance PNG.
        mapping: :func:`read_instance_category_mapping`.
        categories: :func:`ade20k_panoptic_categories`.

    Returns:
        (H, W) int64 segment ids and the segments_info list (id, category_id, iscrowd, area,
        bbox).
    """
    pan = np.zeros(semantic.shape, dtype=np.int64)
    # segment id = (class index) * LABEL_DIVISOR [+ instance number], never 0 (void)
    seg_category = {}
    for label in np.unique(semantic):
        if label == 0 or categories[label - 1]["isthing"]:
            continue
        seg_id = int(label) * LABEL_DIVISOR
        pan[semantic == label] = seg_id
        seg_category[seg_id] = int(label) - 1
    for k, (category, mask) in enumerate(_instances(instance_png, mapping)):
        seg_id = (category + 1) * LABEL_DIVISOR + k + 1
        pan[mask] = seg_id
        seg_category[seg_id] = category
    segments = []
    for seg_id, category in seg_category.items():
        mask = pan == seg_id
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
        segments.append(
            {
                "id": int(seg_id),
                "category_id": category,
                "iscrowd": 0,
                "area": int(mask.sum()),
                "bbox": bbox,
            }
        )
    return pan, segments


def _instance_dir(ade_root: str, dirname: str) -> str:
    path = os.path.join(ade_root, "annotations_instance", dirname)
    require_input(
        path,
        "ADE20K instance annotations",
        "Download annotations_instance.tar from the ADE20K instance segmentation release "
        "(SceneParsing benchmark website) and extract it into ADEChallengeData2016/.",
    )
    return path


def convert_ade20k_panoptic(ade_root: str, *, show_progress: bool = True) -> Dict[str, int]:
    """Write ``ade20k_panoptic_{split}/`` PNGs, ``ade20k_panoptic_{split}.json`` and
    ``ade20k_panoptic_categories.json``. Image ids are positions in the sorted image list,
    as in :func:`convert_ade20k_instance`."""
    mapping = read_instance_category_mapping(ade_root)
    categories = ade20k_panoptic_categories(mapping)
    with open(os.path.join(ade_root, "ade20k_panoptic_categories.json"), "w") as f:
        json.dump(categories, f)
    counts = {}
    for split, dirname in ADE20K_SPLITS:
        stems = _image_stems(ade_root, dirname)
        semantic_dir = os.path.join(ade_root, "annotations", dirname)
        instance_dir = _instance_dir(ade_root, dirname)
        out_dir = os.path.join(ade_root, f"ade20k_panoptic_{split}")
        os.makedirs(out_dir, exist_ok=True)
        images, annotations = [], []
        for image_id, stem in enumerate(
            progress(stems, f"ade20k panoptic {split}", len(stems), show_progress)
        ):
            semantic = np.asarray(Image.open(os.path.join(semantic_dir, stem + ".png")))
            instance_png = np.asarray(
                Image.open(os.path.join(instance_dir, stem + ".png")).convert("RGB")
            )
            pan, segments = ade20k_panoptic_annotation(semantic, instance_png, mapping, categories)
            Image.fromarray(id2rgb(pan)).save(os.path.join(out_dir, stem + ".png"))
            height, width = semantic.shape
            images.append(
                {"id": image_id, "file_name": stem + ".jpg", "height": height, "width": width}
            )
            annotations.append(
                {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
            )
        with open(os.path.join(ade_root, f"ade20k_panoptic_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        counts[split] = len(stems)
    return counts


def convert_ade20k_instance(ade_root: str, *, show_progress: bool = True) -> Dict[str, int]:
    """Write ``ade20k_instance_{split}.json`` (COCO format, RLE masks, the 100 thing
    classes with id = scene-parsing class index - 1)."""
    mapping = read_instance_category_mapping(ade_root)
    categories = [
        {"id": c["id"], "name": c["name"]}
        for c in ade20k_panoptic_categories(mapping)
        if c["isthing"]
    ]
    counts = {}
    for split, dirname in ADE20K_SPLITS:
        stems = _image_stems(ade_root, dirname)
        instance_dir = _instance_dir(ade_root, dirname)
        images, annotations = [], []
        for image_id, stem in enumerate(
            progress(stems, f"ade20k instance {split}", len(stems), show_progress)
        ):
            instance_png = np.asarray(
                Image.open(os.path.join(instance_dir, stem + ".png")).convert("RGB")
            )
            height, width = instance_png.shape[:2]
            images.append(
                {"id": image_id, "file_name": stem + ".jpg", "height": height, "width": width}
            )
            for category, mask in _instances(instance_png, mapping):
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category,
                        "segmentation": rle,
                        "area": int(mask.sum()),
                        "bbox": [float(v) for v in mask_util.toBbox(rle)],
                        "iscrowd": 0,
                    }
                )
        with open(os.path.join(ade_root, f"ade20k_instance_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        counts[split] = len(stems)
    return counts
