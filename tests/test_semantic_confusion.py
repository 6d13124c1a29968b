"""The semantic evaluator writes the confusion matrix it scores from."""

import csv

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from mask2former.engine.evaluation import SemSegEvaluatorWithConfusion

CLASSES = ["road", "car", "tree"]
IGNORE = 255


def _register(tmp_path, ground_truths):
    name = f"test_semantic_confusion_{tmp_path.name}"
    records = []
    for index, ground_truth in enumerate(ground_truths):
        path = tmp_path / f"gt{index}.png"
        Image.fromarray(ground_truth.astype(np.uint8)).save(path)
        records.append(
            {
                "file_name": str(tmp_path / f"image{index}.jpg"),
                "sem_seg_file_name": str(path),
                "height": ground_truth.shape[0],
                "width": ground_truth.shape[1],
            }
        )
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        stuff_classes=CLASSES, ignore_label=IGNORE, evaluator_type="sem_seg"
    )
    return name, records


def _scores(labels):
    """(K, H, W) scores whose arg-max is ``labels``."""
    return torch.stack([torch.from_numpy(labels == k).float() for k in range(len(CLASSES))])


def test_confusion_matrix_file(tmp_path):
    rng = np.random.default_rng(0)
    ground_truths = [rng.integers(0, 3, (5, 7)), rng.integers(0, 3, (4, 6))]
    ground_truths[0][0, :3] = IGNORE
    predictions = [rng.integers(0, 3, gt.shape) for gt in ground_truths]
    name, records = _register(tmp_path, ground_truths)
    output = tmp_path / "eval"
    evaluator = SemSegEvaluatorWithConfusion(name, distributed=False, output_dir=str(output))
    evaluator.reset()
    for record, prediction in zip(records, predictions):
        evaluator.process([record], [{"sem_seg": _scores(prediction)}])
    results = evaluator.evaluate()

    with open(output / "sem_seg_confusion_matrix.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ground truth \\ prediction", *CLASSES]
    assert [row[0] for row in rows[1:]] == CLASSES
    matrix = np.array([[int(value) for value in row[1:]] for row in rows[1:]])
    expected = np.zeros((3, 3), dtype=int)
    for ground_truth, prediction in zip(ground_truths, predictions):
        for gt, pred in zip(ground_truth.ravel(), prediction.ravel()):
            if gt != IGNORE:
                expected[gt, pred] += 1
    np.testing.assert_array_equal(matrix, expected)
    # the evaluator's own metrics come from the same counts
    iou = np.diag(expected) / (expected.sum(0) + expected.sum(1) - np.diag(expected))
    assert results["sem_seg"]["mIoU"] == pytest.approx(100 * iou.mean())
