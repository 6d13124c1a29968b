"""Per-class panoptic quality in the panoptic evaluator's results ("PQ-{class}") and log."""

import logging
import math

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from panopticapi.evaluation import PQStat
from panopticapi.utils import rgb2id
from PIL import Image

from mask2former.data.datasets import (
    panoptic_category_metadata,
    register_coco_panoptic_with_checks,
)
from mask2former.data.synthetic import (
    SHAPES_CATEGORIES,
    SyntheticConfig,
    ensure_synthetic_dataset,
    synthetic_split_paths,
)
from mask2former.engine.partial_evaluation import PartialCOCOPanopticEvaluator, per_class_pq


def test_per_class_values_follow_the_definitions():
    stat = PQStat()
    stat.pq_per_cat[1].iou, stat.pq_per_cat[1].tp = 1.5, 2  # two matches, IoU 0.75 each
    stat.pq_per_cat[1].fp, stat.pq_per_cat[1].fn = 1, 1
    stat.pq_per_cat[2].fn = 3  # only missed
    stat.pq_per_cat[3].fp = 0  # touched, but nothing counted
    results = per_class_pq(stat, {1: "a", 2: "b", 3: "c", 4: "d"})
    assert list(results) == ["a", "b", "c", "d"]
    # PQ = sum IoU / (TP + FP/2 + FN/2) = SQ x RQ
    assert results["a"]["SQ"] == pytest.approx(75.0)
    assert results["a"]["RQ"] == pytest.approx(100 * 2 / 3)
    assert results["a"]["PQ"] == pytest.approx(50.0)
    assert results["b"]["PQ"] == 0.0 and results["b"]["RQ"] == 0.0
    assert math.isnan(results["b"]["SQ"])  # no true positive
    for absent in ("c", "d"):  # neither ground truth nor prediction
        assert all(math.isnan(results[absent][k]) for k in ("PQ", "SQ", "RQ"))
        assert (results[absent]["TP"], results[absent]["FP"], results[absent]["FN"]) == (0, 0, 0)
    assert 4 not in stat.pq_per_cat  # reading did not add a class


@pytest.fixture(scope="module")
def panoptic_set(tmp_path_factory):
    """A small synthetic panoptic val set registered with one more class than it uses."""
    root = str(tmp_path_factory.mktemp("per_class") / "shapes")
    ensure_synthetic_dataset(root, SyntheticConfig(num_train=1, num_val=6, seed=4, size=96))
    paths = synthetic_split_paths(root, "val")
    categories = [*SHAPES_CATEGORIES, {"id": 99, "name": "unused", "isthing": 0}]
    name = "test_panoptic_per_class_val"
    if name not in DatasetCatalog.list():
        register_coco_panoptic_with_checks(
            name,
            panoptic_category_metadata(categories),
            paths["image_root"],
            paths["panoptic_root"],
            paths["panoptic_json"],
            paths["sem_seg_root"],
            paths["instances_json"],
        )
    return name


def _ground_truth_as_predictions(record, relabel):
    pan = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"])))
    panoptic = torch.zeros(pan.shape, dtype=torch.int32)
    segments = []
    for k, segment in enumerate(record["segments_info"]):
        panoptic[torch.from_numpy(pan == segment["id"])] = k + 1
        category = relabel.get(segment["category_id"], segment["category_id"])
        segments.append({"id": k + 1, "category_id": category, "isthing": segment["isthing"]})
    return {"panoptic_seg": (panoptic, segments)}


def test_per_class_pq_in_results_and_log(panoptic_set, tmp_path, caplog):
    names = [c["name"] for c in SHAPES_CATEGORIES]
    # contiguous ids: every "square" (2) is predicted as a "triangle" (1)
    square, triangle = names.index("square"), names.index("triangle")
    evaluator = PartialCOCOPanopticEvaluator(panoptic_set, str(tmp_path))
    evaluator.reset()
    for record in DatasetCatalog.get(panoptic_set):
        inputs = [{k: record[k] for k in ("file_name", "image_id", "height", "width")}]
        output = _ground_truth_as_predictions(record, {square: triangle})
        evaluator.process(inputs, [output])
    with caplog.at_level(logging.INFO, logger="mask2former"):
        results = evaluator.evaluate()["panoptic_seg"]
    per_class = {name: results[f"PQ-{name}"] for name in [*names, "unused"]}
    assert per_class["square"] == 0.0
    assert 0.0 < per_class["triangle"] < 100.0  # its own segments, and false positives
    assert math.isnan(per_class["unused"])
    untouched = [
        n for n in names if n not in ("square", "triangle") and not math.isnan(per_class[n])
    ]
    assert untouched and all(per_class[n] == pytest.approx(100.0) for n in untouched)
    # panopticapi's PQ is the mean over the classes that occur: the per-class values agree
    occurring = [v for v in per_class.values() if not math.isnan(v)]
    assert results["PQ"] == pytest.approx(sum(occurring) / len(occurring))
    assert "Per-category panoptic results" in caplog.text
    assert "| square" in caplog.text and "| unused" in caplog.text
