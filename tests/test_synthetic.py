"""The synthetic shapes data set: determinism, counts, consistency of its three formats."""

import json
import multiprocessing
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.structures import BitMasks, Instances, polygons_to_bitmask
from panopticapi.utils import rgb2id
from PIL import Image

from mask2former.data.datasets import (
    panoptic_category_metadata,
    register_coco_panoptic_with_checks,
)
from mask2former.data.preparation.coco import convert_panoptic_to_semantic
from mask2former.data.synthetic import (
    SHAPES_CATEGORIES,
    SyntheticConfig,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    is_synthetic_dataset_complete,
    main,
    synthetic_split_paths,
)

SMALL = SyntheticConfig(num_train=8, num_val=4, seed=3, size=96)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "shapes")
    return ensure_synthetic_dataset(root, SMALL)


def _all_files(root):
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_same_seed_gives_identical_files(shapes_root, tmp_path):
    again = str(tmp_path / "again")
    generate_synthetic_dataset(again, SMALL)
    assert _all_files(again) == _all_files(shapes_root)


def test_different_seed_gives_different_images(shapes_root, tmp_path):
    other = str(tmp_path / "other")
    generate_synthetic_dataset(other, SyntheticConfig(num_train=8, num_val=4, seed=4, size=96))
    first = _all_files(shapes_root)
    second = _all_files(other)
    assert first.keys() == second.keys()
    images = [k for k in first if k.endswith(".jpg")]
    assert sum(first[k] != second[k] for k in images) >= len(images) - 1


def _load(root, split):
    paths = synthetic_split_paths(root, split)
    with open(paths["instances_json"]) as f:
        instances = json.load(f)
    with open(paths["panoptic_json"]) as f:
        panoptic = json.load(f)
    return paths, instances, panoptic


@pytest.mark.parametrize("split,count", [("train", 8), ("val", 4)])
def test_counts_and_categories(shapes_root, split, count):
    paths, instances, panoptic = _load(shapes_root, split)
    assert len(instances["images"]) == count and len(panoptic["annotations"]) == count
    for key in ("image_root", "panoptic_root", "sem_seg_root"):
        assert len(os.listdir(paths[key])) == count
    assert [c["id"] for c in instances["categories"]] == [1, 2, 3, 4]
    assert len(panoptic["categories"]) == len(SHAPES_CATEGORIES) == 7
    thing_ids = {c["id"] for c in panoptic["categories"] if c["isthing"]}
    assert {a["category_id"] for a in instances["annotations"]} <= thing_ids


def test_instances_match_panoptic_segments(shapes_root):
    paths, instances, panoptic = _load(shapes_root, "train")
    by_image = {}
    for ann in instances["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    kinds = set()
    for pan_ann in panoptic["annotations"]:
        image_id = pan_ann["image_id"]
        pan = rgb2id(
            np.asarray(Image.open(os.path.join(paths["panoptic_root"], pan_ann["file_name"])))
        )
        size = pan.shape
        things = [s for s in pan_ann["segments_info"] if s["category_id"] <= 4]
        anns = by_image.get(image_id, [])
        assert len(anns) == len(things)
        for ann in anns:
            seg = ann["segmentation"]
            if isinstance(seg, dict):
                kinds.add("rle")
                mask = mask_util.decode(seg).astype(bool)
            else:
                kinds.add("polygon")
                mask = polygons_to_bitmask(seg, *size)
            # the best matching thing segment of the same class
            candidates = [s for s in things if s["category_id"] == ann["category_id"]]
            overlaps = [(mask & (pan == s["id"])).sum() for s in candidates]
            best = candidates[int(np.argmax(overlaps))]
            segment = pan == best["id"]
            assert np.array_equal(mask, segment)
            assert ann["area"] == best["area"] == segment.sum()
    assert kinds == {"rle", "polygon"}


def test_semantic_pngs_equal_panoptic_derived_semantics(shapes_root, tmp_path):
    """The COCO semantic-from-panoptic conversion reproduces the synthetic semantic PNGs."""
    paths = synthetic_split_paths(shapes_root, "val")
    out_dir = str(tmp_path / "converted")
    count = convert_panoptic_to_semantic(
        paths["panoptic_json"], paths["panoptic_root"], out_dir, show_progress=False
    )
    assert count == 4
    saw_ignore = False
    for name in sorted(os.listdir(paths["sem_seg_root"])):
        expected = np.asarray(Image.open(os.path.join(paths["sem_seg_root"], name)))
        converted = np.asarray(Image.open(os.path.join(out_dir, name)))
        assert expected.dtype == np.uint8 and np.array_equal(expected, converted)
        assert set(np.unique(expected).tolist()) <= set(range(7)) | {255}
        saw_ignore |= bool((expected == 255).any())
    assert saw_ignore


def test_things_are_not_tiny(shapes_root):
    _paths, instances, _panoptic = _load(shapes_root, "train")
    assert instances["annotations"], "no instances generated"
    assert min(a["area"] for a in instances["annotations"]) >= SMALL.min_visible_area


def test_ensure_is_idempotent_and_redoes_interrupted_runs(tmp_path):
    root = str(tmp_path / "shapes")
    cfg = SyntheticConfig(num_train=2, num_val=1, seed=0, size=64)
    ensure_synthetic_dataset(root, cfg)
    marker = os.path.join(root, "GENERATED.json")
    stamp = os.stat(marker).st_mtime_ns
    ensure_synthetic_dataset(root, cfg)
    assert os.stat(marker).st_mtime_ns == stamp
    # an interrupted generation leaves no marker: the next call regenerates
    os.remove(marker)
    assert not is_synthetic_dataset_complete(root)
    ensure_synthetic_dataset(root, cfg)
    assert is_synthetic_dataset_complete(root)
    # other parameters: kept unless overwrite
    bigger = SyntheticConfig(num_train=3, num_val=1, seed=0, size=64)
    ensure_synthetic_dataset(root, bigger)
    assert len(os.listdir(synthetic_split_paths(root, "train")["image_root"])) == 2
    ensure_synthetic_dataset(root, bigger, overwrite=True)
    assert len(os.listdir(synthetic_split_paths(root, "train")["image_root"])) == 3


def test_command_line(tmp_path):
    root = str(tmp_path / "cli")
    main(["--root", root, "--num-train", "2", "--num-val", "1", "--seed", "5", "--size", "64"])
    assert is_synthetic_dataset_complete(root)
    image = Image.open(os.path.join(synthetic_split_paths(root, "val")["image_root"], "000000.jpg"))
    assert image.size == (64, 64)


def test_ground_truth_scores_perfectly_through_real_evaluators(shapes_root, tmp_path):
    """Predicting the panoptic ground truth gives PQ, mask AP and mIoU of 100."""
    paths = synthetic_split_paths(shapes_root, "val")
    name = "test_synthetic_eval_val"
    if name not in DatasetCatalog.list():
        register_coco_panoptic_with_checks(
            name,
            panoptic_category_metadata(SHAPES_CATEGORIES),
            paths["image_root"],
            paths["panoptic_root"],
            paths["panoptic_json"],
            paths["sem_seg_root"],
            paths["instances_json"],
        )
    assert MetadataCatalog.get(name).evaluator_type == "coco_panoptic_seg"
    evaluators = [
        COCOPanopticEvaluator(name, str(tmp_path / "pan")),
        COCOEvaluator(name, tasks=("segm",), distributed=False, output_dir=str(tmp_path / "ins")),
        SemSegEvaluator(name, distributed=False),
    ]
    for evaluator in evaluators:
        evaluator.reset()
    for record in DatasetCatalog.get(name):
        pan = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"])))
        panoptic = torch.zeros(pan.shape, dtype=torch.int32)
        segments, masks, classes = [], [], []
        for k, seg in enumerate(record["segments_info"]):
            mask = torch.from_numpy(pan == seg["id"])
            panoptic[mask] = k + 1
            segments.append(
                {"id": k + 1, "category_id": seg["category_id"], "isthing": seg["isthing"]}
            )
            if seg["isthing"]:
                masks.append(mask)
                classes.append(seg["category_id"])
        semantic = torch.from_numpy(
            np.asarray(Image.open(record["sem_seg_file_name"])).astype(np.int64)
        )
        probs = torch.stack([(semantic == c).float() for c in range(len(SHAPES_CATEGORIES))])
        instances = Instances(pan.shape)
        instances.pred_masks = (
            torch.stack(masks) if masks else torch.zeros((0, *pan.shape), dtype=torch.bool)
        )
        instances.pred_boxes = BitMasks(instances.pred_masks).get_bounding_boxes()
        instances.scores = torch.ones(len(masks))
        instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inputs = [{k: record[k] for k in ("file_name", "image_id", "height", "width")}]
        output = {"panoptic_seg": (panoptic, segments), "instances": instances, "sem_seg": probs}
        for evaluator in evaluators:
            evaluator.process(inputs, [output])
    panoptic_result, instance_result, semantic_result = (e.evaluate() for e in evaluators)
    assert panoptic_result["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert instance_result["segm"]["AP"] == pytest.approx(100.0)
    assert semantic_result["sem_seg"]["mIoU"] == pytest.approx(100.0)


def _ensure_small(root):
    return ensure_synthetic_dataset(root, SyntheticConfig(num_train=2, num_val=1, size=64))


def test_concurrent_ensure_generates_once(tmp_path):
    root = str(tmp_path / "shapes")
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(_ensure_small, [root, root]) == [root, root]
    assert os.listdir(tmp_path) == ["shapes"]  # no temporary or lock files left
    assert is_synthetic_dataset_complete(root)


def test_sets_from_an_older_generator_are_regenerated(tmp_path):
    root = str(tmp_path / "shapes")
    cfg = SyntheticConfig(num_train=2, num_val=1, seed=0, size=64)
    ensure_synthetic_dataset(root, cfg)
    marker = os.path.join(root, "GENERATED.json")
    with open(marker) as f:
        params = json.load(f)
    params["format_version"] -= 1
    with open(marker, "w") as f:
        json.dump(params, f)
    ensure_synthetic_dataset(root, SyntheticConfig(num_train=3, num_val=1, seed=0, size=64))
    assert len(os.listdir(synthetic_split_paths(root, "train")["image_root"])) == 3
