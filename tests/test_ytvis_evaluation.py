"""Video AP (YouTube-VIS): spatio-temporal IoU, AP, area ranges, no-ground-truth mode, results."""

import itertools
import json
import logging

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

import mask2former.data  # noqa: F401  registers the data sets
from mask2former.config import add_maskformer2_config
from mask2former.data.datasets.ytvis import register_ytvis_instances
from mask2former.engine.evaluation import build_evaluator
from mask2former.engine.ytvis_evaluation import YTVISEvaluator, video_mask_iou
from mask2former.utils.export import encode_video_masks

_names = itertools.count()


def _brute_force_iou(dt, gt, crowd):
    """(L, H, W) bool masks; the definition, frame by frame, in numpy."""
    inter = sum(np.logical_and(d, g).sum() for d, g in zip(dt, gt))
    union = sum(np.logical_or(d, g).sum() for d, g in zip(dt, gt))
    if crowd:
        union = dt.sum()
    return inter / union if union else 0.0


def _random_video_masks(rng, length, height, width):
    masks = rng.random((length, height, width)) < rng.uniform(0.05, 0.6)
    masks[rng.random(length) < 0.3] = False  # absent in some frames
    return masks


def test_video_iou_matches_brute_force():
    rng = np.random.default_rng(0)
    length, height, width = 5, 13, 17
    dts = [_random_video_masks(rng, length, height, width) for _ in range(6)]
    gts = [_random_video_masks(rng, length, height, width) for _ in range(4)]
    gts.append(np.zeros((length, height, width), dtype=bool))  # never present
    crowd = [0, 1, 0, 0, 0]
    ious = video_mask_iou(
        [encode_video_masks(d) for d in dts], [encode_video_masks(g) for g in gts], crowd
    )
    assert ious.shape == (6, 5)
    for i, d in enumerate(dts):
        for j, g in enumerate(gts):
            assert ious[i, j] == pytest.approx(_brute_force_iou(d, g, crowd[j]), abs=1e-12)
    assert video_mask_iou([], [encode_video_masks(gts[0])], [0]).shape == (0, 1)
    with pytest.raises(ValueError, match="different lengths"):
        video_mask_iou([encode_video_masks(dts[0][:2])], [encode_video_masks(gts[0])], [0])


def test_encode_video_masks_marks_empty_frames():
    masks = np.zeros((3, 4, 5), dtype=bool)
    masks[1, 1:3, 2:4] = True
    rles = encode_video_masks(masks)
    assert rles[0] is None and rles[2] is None
    assert isinstance(rles[1]["counts"], str)
    np.testing.assert_array_equal(mask_util.decode(rles[1]), masks[1])


def _register(tmp_path, videos, *, ground_truth=True):
    """Register a YouTube-VIS JSON of ``videos``: (video_id, height, width, length, tracks)
    with tracks a list of (category id 1 or 2, (L, H, W) bool masks, iscrowd)."""
    content = {"videos": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    annotations = []
    for video_id, height, width, length, tracks in videos:
        content["videos"].append(
            {
                "id": video_id,
                "height": height,
                "width": width,
                "length": length,
                "file_names": [f"{video_id}/{t}.jpg" for t in range(length)],
            }
        )
        for category, masks, iscrowd in tracks:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "video_id": video_id,
                    "category_id": category,
                    "iscrowd": iscrowd,
                    "segmentations": encode_video_masks(masks),
                    "bboxes": [
                        None if rle is None else [0, 0, 1, 1] for rle in encode_video_masks(masks)
                    ],
                }
            )
    if ground_truth:
        content["annotations"] = annotations
    json_file = tmp_path / f"gt{next(_names)}.json"
    json_file.write_text(json.dumps(content))
    name = f"test_video_ap_{next(_names)}"
    register_ytvis_instances(name, {}, str(json_file), str(tmp_path))
    MetadataCatalog.get(name).set(
        thing_classes=["a", "b"], thing_dataset_id_to_contiguous_id={1: 0, 2: 1}
    )
    return name


def _box_masks(length, height, width, box, frames):
    masks = np.zeros((length, height, width), dtype=bool)
    y0, x0, y1, x1 = box
    for t in frames:
        masks[t, y0:y1, x0:x1] = True
    return masks


def _output(tracks, height, width, scores=None):
    return {
        "image_size": (height, width),
        "pred_scores": scores or [0.9 - 0.1 * i for i in range(len(tracks))],
        "pred_labels": [category - 1 for category, _m, _c in tracks],
        "pred_masks": [torch.from_numpy(masks) for _c, masks, _crowd in tracks],
    }


def _evaluate(name, outputs, output_dir=None):
    evaluator = YTVISEvaluator(name, output_dir=output_dir)
    evaluator.reset()
    for video_id, output in outputs:
        evaluator.process([{"video_id": video_id}], [output])
    return evaluator.evaluate()


def _two_videos():
    length, height, width = 4, 40, 50
    # video 1: an object absent in frames 1 and 2 and another present throughout
    first = [
        (1, _box_masks(length, height, width, (2, 2, 12, 15), [0, 3]), 0),
        (1, _box_masks(length, height, width, (20, 20, 35, 45), range(4)), 0),
    ]
    second = [(2, _box_masks(length, height, width, (5, 5, 25, 30), [1, 2]), 0)]
    return [(1, height, width, length, first), (2, height, width, length, second)]


def test_ground_truth_as_predictions_scores_100(tmp_path):
    videos = _two_videos()
    name = _register(tmp_path, videos)
    results = _evaluate(name, [(v[0], _output(v[4], v[1], v[2])) for v in videos])["segm"]
    for metric in ("AP", "AP50", "AP75", "APs", "AP-a", "AP-b", "AR10"):
        assert results[metric] == pytest.approx(100.0)
    # every object is small (< 128^2 pixels): no medium or large ones
    assert np.isnan(results["APm"]) and np.isnan(results["APl"])
    # one detection per video and class finds one of video 1's two "a" objects
    assert results["AR1"] == pytest.approx(100.0 * (0.5 + 1.0) / 2)


def test_missed_object_and_wrong_frames_lower_ap(tmp_path):
    videos = _two_videos()
    name = _register(tmp_path, videos)
    missed = [(1, _output(videos[0][4][:1], 40, 50)), (2, _output(videos[1][4], 40, 50))]
    results = _evaluate(name, missed)["segm"]
    assert results["AP-b"] == pytest.approx(100.0)
    assert results["AP-a"] < 100.0 and results["AP"] < 100.0
    # the object of video 2 predicted in all frames instead of 2 of 4: IoU 1/2
    category, masks, crowd = videos[1][4][0]
    everywhere = masks.copy()
    everywhere[[0, 3]] = masks[1]
    spread = [
        (1, _output(videos[0][4], 40, 50)),
        (2, _output([(category, everywhere, crowd)], 40, 50)),
    ]
    results = _evaluate(name, spread)["segm"]
    assert results["AP50"] == pytest.approx(100.0)
    assert results["AP75"] < 100.0
    assert not _evaluate(name, [])["segm"]["AP"] >= 0  # NaN without predictions


def test_area_is_the_mean_over_present_frames(tmp_path):
    length, height, width = 4, 300, 300
    # 150x150 = 22500 pixels in 2 of 4 frames: medium by its mean over present frames (22500),
    # small if absent frames counted as 0 (11250)
    medium = _box_masks(length, height, width, (0, 0, 150, 150), [0, 1])
    # 270x270 = 72900 in 1 frame: large
    large = _box_masks(length, height, width, (10, 10, 280, 280), [3])
    name = _register(tmp_path, [(5, height, width, length, [(1, medium, 0), (2, large, 0)])])
    tracks = [(1, medium, 0), (2, large, 0)]
    results = _evaluate(name, [(5, _output(tracks, height, width))])["segm"]
    assert np.isnan(results["APs"])
    assert results["APm"] == pytest.approx(100.0) and results["APl"] == pytest.approx(100.0)


def test_crowd_objects_are_ignored(tmp_path):
    length, height, width = 3, 30, 30
    person = _box_masks(length, height, width, (0, 0, 10, 10), range(3))
    crowd = _box_masks(length, height, width, (15, 15, 30, 30), range(3))
    name = _register(tmp_path, [(1, height, width, length, [(1, person, 0), (1, crowd, 1)])])
    inside_crowd = _box_masks(length, height, width, (18, 18, 28, 28), range(3))
    tracks = [(1, person, 0), (1, inside_crowd, 0)]
    results = _evaluate(name, [(1, _output(tracks, height, width))])["segm"]
    # the detection inside the crowd region is neither a true nor a false positive
    assert results["AP"] == pytest.approx(100.0)


def test_results_json_round_trips(tmp_path):
    videos = _two_videos()
    name = _register(tmp_path, videos)
    outputs = [(v[0], _output(v[4], v[1], v[2])) for v in videos]
    _evaluate(name, outputs, output_dir=str(tmp_path / "out"))
    with open(tmp_path / "out" / "results.json") as f:
        results = json.load(f)
    assert len(results) == 3
    expected = [(v[0], track) for v in videos for track in v[4]]
    for result, (video_id, (category, masks, _crowd)) in zip(results, expected):
        assert set(result) == {"video_id", "score", "category_id", "segmentations"}
        assert result["video_id"] == video_id and result["category_id"] == category
        assert len(result["segmentations"]) == len(masks)
        for rle, mask in zip(result["segmentations"], masks):
            if not mask.any():
                assert rle is None
            else:
                np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), mask)


def test_no_ground_truth_writes_results_only(tmp_path, caplog):
    videos = _two_videos()
    name = _register(tmp_path, videos, ground_truth=False)
    outputs = [(v[0], _output(v[4], v[1], v[2])) for v in videos]
    with caplog.at_level(logging.WARNING):
        assert _evaluate(name, outputs, output_dir=str(tmp_path / "sub")) == {}
    assert "no ground truth" in caplog.text and "challenge server" in caplog.text
    assert (tmp_path / "sub" / "results.json").is_file()


def test_unprocessed_videos_are_left_out(tmp_path, caplog):
    videos = _two_videos()
    name = _register(tmp_path, videos)
    with caplog.at_level(logging.WARNING):
        results = _evaluate(name, [(1, _output(videos[0][4], 40, 50))])["segm"]
    assert results["AP"] == pytest.approx(100.0)
    assert "Scoring 1 of the 2 videos" in caplog.text


def test_build_evaluator_for_ytvis_data_sets(tmp_path):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = True
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = False
    evaluator = build_evaluator(cfg, "ytvis_2019_val", str(tmp_path))
    assert isinstance(evaluator, YTVISEvaluator)
    assert isinstance(build_evaluator(cfg, "shapes_video_val", str(tmp_path)), YTVISEvaluator)
