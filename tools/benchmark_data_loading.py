"""Benchmark the training dataset mappers: milliseconds per image, ours and the official ones.

A data loader worker maps one image at a time on one thread: it reads the picture and its
annotation files, augments them and builds the mask targets. This times that work for the five
mappers of the official configs (``INPUT.DATASET_MAPPER_NAME``): ``coco_panoptic_lsj`` and
``coco_instance_lsj`` (COCO recipes: large-scale jittering to 1024 x 1024) and
``mask_former_semantic``, ``mask_former_panoptic`` and ``mask_former_instance`` (ADE20K
recipes: multi-scale resize and a 512 x 512 crop). The data set is generated here: ``--images``
COCO-sized pictures (640 x 480 JPEG), each with ``--segments`` segments (a few large "stuff"
regions, the rest polygon "things") as a panoptic PNG, a semantic PNG and polygon annotations.

With ``--official PATH`` (a checkout of the official Mask2Former release), its mapper of the
same name maps the same records, with the same config and random seed, in turn with ours. Its
COCO instance mapper crops polygons with shapely, which this project does not need; without
shapely installed that row says so.

Timing: ``--repeats`` rounds over all images, the mappers in turn; each keeps its fastest round
(the least disturbed by other work on the machine).

Prints a table and, at the end, the results as JSON.

Usage:
    python tools/benchmark_data_loading.py [--official ../shared/gpu/baseline/Mask2Former]
        [--images 16] [--segments 30] [--repeats 3] [--mappers coco_panoptic_lsj ...]
"""

import argparse
import importlib
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode, polygons_to_bitmask
from panopticapi.utils import id2rgb
from PIL import Image
from tabulate import tabulate

from mask2former.config import load_config
from mask2former.data import build_dataset_mapper

HEIGHT, WIDTH = 480, 640
DATASET_NAME = "benchmark_data_loading"  # metadata the mappers read: the ignore label
IGNORE_LABEL = 255
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# INPUT.DATASET_MAPPER_NAME -> (config, kind of record, official module, official class)
MAPPERS = {
    "coco_panoptic_lsj": (
        "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
        "panoptic",
        "coco_panoptic_new_baseline_dataset_mapper",
        "COCOPanopticNewBaselineDatasetMapper",
    ),
    "coco_instance_lsj": (
        "configs/coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml",
        "instance",
        "coco_instance_new_baseline_dataset_mapper",
        "COCOInstanceNewBaselineDatasetMapper",
    ),
    "mask_former_semantic": (
        "configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml",
        "semantic",
        "mask_former_semantic_dataset_mapper",
        "MaskFormerSemanticDatasetMapper",
    ),
    "mask_former_panoptic": (
        "configs/ade20k/panoptic-segmentation/maskformer2_R50_bs16_160k.yaml",
        "panoptic_with_semantic",
        "mask_former_panoptic_dataset_mapper",
        "MaskFormerPanopticDatasetMapper",
    ),
    "mask_former_instance": (
        "configs/ade20k/instance-segmentation/maskformer2_R50_bs16_160k.yaml",
        "instance",
        "mask_former_instance_dataset_mapper",
        "MaskFormerInstanceDatasetMapper",
    ),
}


def _ellipse_polygon(rng: np.random.Generator) -> List[float]:
    """A flat [x0, y0, x1, y1, ...] polygon of 24 vertices around a random ellipse."""
    center_x, center_y = rng.uniform(40, WIDTH - 40), rng.uniform(40, HEIGHT - 40)
    radius_x, radius_y = rng.uniform(10, 120), rng.uniform(10, 90)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    scale = rng.uniform(0.8, 1.0, size=24)
    xs = np.clip(center_x + radius_x * scale * np.cos(angles), 0, WIDTH - 1)
    ys = np.clip(center_y + radius_y * scale * np.sin(angles), 0, HEIGHT - 1)
    return np.stack([xs, ys], axis=1).ravel().tolist()


def write_data_set(root: str, images: int, segments: int, seed: int = 0) -> Dict[str, List]:
    """Write the pictures and annotation files under ``root``; return each kind's records."""
    rng = np.random.default_rng(seed)
    records = {kind: [] for kind in ("panoptic", "panoptic_with_semantic", "semantic", "instance")}
    stuff = min(3, segments)
    for index in range(images):
        picture = np.full((HEIGHT, WIDTH, 3), rng.integers(0, 255, size=3), dtype=np.uint8)
        panoptic = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
        semantic = np.full((HEIGHT, WIDTH), IGNORE_LABEL, dtype=np.uint8)
        segments_info, annotations = [], []
        ids = rng.choice(2**24 - 1, size=segments, replace=False) + 1
        for number, segment_id in enumerate(ids.tolist()):
            if number < stuff:  # a horizontal band, painted first
                top = number * HEIGHT // stuff
                mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
                mask[top : top + HEIGHT // stuff] = True
                category, polygon = int(rng.integers(80, 133)), None
            else:
                polygon = _ellipse_polygon(rng)
                mask = polygons_to_bitmask([polygon], HEIGHT, WIDTH)
                category = int(rng.integers(0, 80))
            panoptic[mask] = segment_id
            semantic[mask] = category
            picture[mask] = rng.integers(0, 255, size=3)
            segments_info.append({"id": segment_id, "category_id": category, "iscrowd": 0})
            if polygon is not None:
                rows, columns = np.nonzero(mask)
                box = [int(columns.min()), int(rows.min()), int(np.ptp(columns)) + 1]
                box.append(int(np.ptp(rows)) + 1)
                annotations.append(
                    {
                        "segmentation": [polygon],
                        "category_id": category,
                        "bbox": box,
                        "bbox_mode": BoxMode.XYWH_ABS,
                        "iscrowd": 0,
                    }
                )
        # a panoptic JSON lists the segments that are visible, not those painted over
        visible = set(np.unique(panoptic).tolist())
        segments_info = [segment for segment in segments_info if segment["id"] in visible]
        picture = np.clip(picture + rng.normal(0, 8, picture.shape), 0, 255).astype(np.uint8)
        paths = {
            "file_name": os.path.join(root, f"{index}.jpg"),
            "pan_seg_file_name": os.path.join(root, f"{index}_panoptic.png"),
            "sem_seg_file_name": os.path.join(root, f"{index}_semantic.png"),
        }
        Image.fromarray(picture).save(paths["file_name"], quality=90)
        Image.fromarray(id2rgb(panoptic)).save(paths["pan_seg_file_name"])
        Image.fromarray(semantic).save(paths["sem_seg_file_name"])
        base = {"file_name": paths["file_name"], "height": HEIGHT, "width": WIDTH}
        base["image_id"] = index
        panoptic_fields = {"pan_seg_file_name": paths["pan_seg_file_name"]}
        panoptic_fields["segments_info"] = segments_info
        records["panoptic"].append({**base, **panoptic_fields})
        records["panoptic_with_semantic"].append(
            {**base, **panoptic_fields, "sem_seg_file_name": paths["sem_seg_file_name"]}
        )
        records["semantic"].append({**base, "sem_seg_file_name": paths["sem_seg_file_name"]})
        records["instance"].append({**base, "annotations": annotations})
    return records


def _official_mapper(official: str, module_name: str, class_name: str, cfg) -> Callable:
    """The official release's mapper, imported from its ``dataset_mappers`` folder as a
    package of another name (its whole package would register the same names as ours)."""
    package = "official_dataset_mappers"
    if package not in sys.modules:
        folder = os.path.join(official, "mask2former", "data", "dataset_mappers")
        spec = importlib.util.spec_from_file_location(
            package, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
        )
        sys.modules[package] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[package])
    module = importlib.import_module(f"{package}.{module_name}")
    return getattr(module, class_name)(cfg, True)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seconds_per_image(mapper: Callable, records: List[Dict], seed: int) -> float:
    """Seconds per image of one round over ``records`` (the same random draws for every
    mapper)."""
    _seed(seed)
    start = time.perf_counter()
    for record in records:
        mapper(record)
    return (time.perf_counter() - start) / len(records)


def _targets(output: Dict) -> Dict[str, torch.Tensor]:
    """The training targets of a mapper's output, by name. Empty masks are left out: the
    official mappers keep the segments that a crop removed, as empty masks; ours drop them."""
    instances = output["instances"]
    masks = instances.gt_masks
    masks = getattr(masks, "tensor", masks).bool()  # BitMasks or a tensor
    seen = masks.flatten(1).any(1)
    targets = {
        "image": output["image"],
        "padding_mask": output.get("padding_mask"),
        "sem_seg": output.get("sem_seg"),
        "classes": instances.gt_classes[seen],
        "masks": masks[seen],
    }
    return {name: value for name, value in targets.items() if value is not None}


def agreement(ours: Callable, official: Callable, records: List[Dict]) -> Dict:
    """Map each record with both mappers after the same seed: how many images get identical
    targets (those both give), and the mean IoU of their masks where the classes agree."""
    identical, ious = 0, []
    for index, record in enumerate(records):
        _seed(index)
        mine = _targets(ours(record))
        _seed(index)
        theirs = _targets(official(record))
        shared = sorted(set(mine) & set(theirs))
        identical += all(torch.equal(mine[name], theirs[name]) for name in shared)
        if torch.equal(mine["classes"], theirs["classes"]):
            both = (mine["masks"] & theirs["masks"]).flatten(1).sum(1)
            either = (mine["masks"] | theirs["masks"]).flatten(1).sum(1)
            ious.extend((both / either.clamp(min=1)).tolist())
    return {
        "identical_targets": f"{identical}/{len(records)}",
        "mean_mask_iou": round(float(np.mean(ious)), 4) if ious else None,
    }


def run(args: argparse.Namespace, root: str) -> List[Dict]:
    records = write_data_set(root, args.images, args.segments)
    MetadataCatalog.get(DATASET_NAME).set(ignore_label=IGNORE_LABEL)
    rows = []
    for name in args.mappers:
        config, kind, module_name, class_name = MAPPERS[name]
        cfg = load_config(os.path.join(REPO, config))
        cfg.defrost()
        cfg.DATASETS.TRAIN = (DATASET_NAME,)
        cfg.DATASETS.TEST = ()
        mappers = {"ours": build_dataset_mapper(cfg, True)}
        note: Optional[str] = None
        if args.official:
            try:
                mappers["official"] = _official_mapper(args.official, module_name, class_name, cfg)
                _seconds_per_image(mappers["official"], records[kind][:1], 0)
            except ModuleNotFoundError as error:  # shapely, for its polygon crop
                mappers.pop("official")
                note = f"official mapper needs the {error.name!r} package"
        best = {label: float("inf") for label in mappers}
        for round_index in range(args.repeats):
            for label, mapper in mappers.items():
                seconds = _seconds_per_image(mapper, records[kind], round_index)
                best[label] = min(best[label], seconds)
        row = {"mapper": name, "ours_ms": round(best["ours"] * 1000, 1)}
        if "official" in best:
            row["official_ms"] = round(best["official"] * 1000, 1)
            row["speedup_vs_official"] = round(best["official"] / best["ours"], 2)
            row.update(agreement(mappers["ours"], mappers["official"], records[kind]))
        if note:
            row["note"] = note
        rows.append(row)
    return rows


def main(argv=None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", help="a checkout of the official Mask2Former release")
    parser.add_argument("--images", type=int, default=16, help="pictures generated")
    parser.add_argument("--segments", type=int, default=30, help="segments per picture")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each mapper's best")
    parser.add_argument("--mappers", nargs="+", choices=sorted(MAPPERS), default=list(MAPPERS))
    args = parser.parse_args(argv)
    if args.official and not os.path.isdir(os.path.join(args.official, "mask2former")):
        parser.error(f"--official {args.official}: no mask2former/ package in that folder")
    torch.set_num_threads(1)  # as in a data loader worker
    with tempfile.TemporaryDirectory() as root:
        rows = run(args, root)
    print(
        f"{args.images} pictures of {WIDTH}x{HEIGHT}, {args.segments} segments each; "
        f"ms per image on one thread, best of {args.repeats} rounds"
    )
    columns = ["mapper", "ours_ms", "official_ms", "speedup_vs_official"]
    columns += ["identical_targets", "mean_mask_iou", "note"]
    table = [[row.get(column, "-") for column in columns] for row in rows]
    print(tabulate(table, headers=columns))
    print(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
