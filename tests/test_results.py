"""prediction_from_model_output: the model's results, converted, not recomputed."""

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from mask2former.utils.results import TASKS, Prediction, prediction_from_model_output

NAMES = ["circle", "triangle", "sky"]


def _instances(masks, boxes, scores, classes):
    instances = Instances(tuple(masks.shape[-2:]))
    instances.pred_masks = masks
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.scores = torch.tensor(scores)
    instances.pred_classes = torch.tensor(classes)
    return instances


def test_instances_keep_the_model_boxes_in_score_order():
    masks = torch.zeros(3, 8, 10, dtype=torch.bool)
    masks[0, :2, :3] = masks[1, 4:, 5:] = True
    # boxes are computed once, by the model's post-processing: passed through as they are
    boxes = [[0, 0, 4, 3], [5, 4, 10, 8], [0, 0, 0, 0]]
    output = {"instances": _instances(masks, boxes, [0.2, 0.9, 0.05], [0, 1, 0])}
    result = prediction_from_model_output(
        output, (8, 10), class_names=NAMES, score_threshold=0.1
    ).instances
    np.testing.assert_array_equal(result.boxes, np.array([boxes[1], boxes[0]], np.float32))
    np.testing.assert_array_equal(result.masks, masks[[1, 0]].numpy())
    assert result.class_names == ["triangle", "circle"]


def test_probability_masks_are_refused_not_thresholded():
    masks = torch.rand(2, 8, 10)
    output = {"instances": _instances(masks, [[0, 0, 1, 1]] * 2, [0.5, 0.4], [0, 1])}
    with pytest.raises(TypeError, match="MASK_THRESHOLD"):
        prediction_from_model_output(output, (8, 10), class_names=NAMES)


def test_panoptic_segments_keep_the_model_areas():
    segment_ids = torch.zeros(8, 10, dtype=torch.int32)
    segment_ids[:2] = 1
    segments_info = [{"id": 1, "isthing": False, "category_id": 2, "area": 20}]
    result = prediction_from_model_output(
        {"panoptic_seg": (segment_ids, segments_info)}, (8, 10), class_names=NAMES
    )
    assert result.panoptic.segments == [
        {
            "id": 1,
            "category_id": 2,
            "category_name": "sky",
            "isthing": False,
            "score": None,
            "area": 20,
        }
    ]
    assert result.available_tasks() == ["panoptic"]


def test_available_tasks_follow_the_declared_order():
    everything = Prediction((1, 1), panoptic=object(), instances=object(), semantic=object())
    assert everything.available_tasks() == list(TASKS)


def test_instance_threshold_filters_instances_only():
    masks = torch.zeros(2, 8, 10, dtype=torch.bool)
    output = {
        "instances": _instances(masks, [[0, 0, 1, 1]] * 2, [0.9, 0.3], [0, 1]),
        "sem_seg": torch.rand(3, 8, 10),
    }
    prediction = prediction_from_model_output(output, (8, 10), class_names=NAMES)
    filtered = prediction.with_instance_threshold(0.5)
    assert filtered.instances.class_names == ["circle"] and len(prediction.instances) == 2
    assert filtered.semantic is prediction.semantic
    without_instances = Prediction((8, 10), semantic=prediction.semantic)
    assert without_instances.with_instance_threshold(0.5) is without_instances
