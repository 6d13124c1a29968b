"""Boundary AP (mask2former/engine/boundary_ap.py): the boundary regions, the IoU it scores
with, the evaluators that report it and tools/evaluate_coco_boundary_ap.py.

Boundary regions are checked against SciPy's binary erosion (an independent implementation)
and against widths counted by hand; APs against what COCO's matching gives for one object and
one detection at an IoU computed here from those regions.
"""

import json
import logging
import math
import re

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from helpers import load_script
from pycocotools.coco import COCO
from scipy import ndimage

from mask2former.config import load_config
from mask2former.engine.boundary_ap import (
    BoundaryCOCOeval,
    boundary_width,
    evaluate_mask_ap,
    mask_boundary,
)
from mask2former.engine.evaluation import build_evaluator
from mask2former.engine.partial_evaluation import PartialCOCOEvaluator

THRESHOLDS = np.linspace(0.5, 0.95, 10)


def rectangle(height, width, top, left, bottom, right):
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def scipy_boundary(mask, width):
    """The mask minus its erosion by (2 width + 1)-square, background outside the image."""
    eroded = ndimage.binary_erosion(
        mask, structure=np.ones((3, 3), bool), iterations=width, border_value=0
    )
    return mask & ~eroded


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def single_pair_ap(pair_iou):
    """COCO AP (%) of one detection of one object at IoU ``pair_iou``: 100 at each threshold
    it reaches, 0 at the others, averaged."""
    return 100 * float(np.mean(pair_iou >= THRESHOLDS - 1e-12))


def test_boundary_width():
    assert boundary_width(480, 640) == 16  # 0.02 x 800
    assert boundary_width(200, 300) == 7  # 0.02 x 360.6
    assert boundary_width(10, 10) == 1  # 0.28 rounds to 0: at least one pixel
    assert boundary_width(480, 640, 0.005) == 4
    for ratio in (0, -0.02, math.nan):
        with pytest.raises(ValueError, match="dilation_ratio must be > 0"):
            boundary_width(480, 640, ratio)


def test_boundary_of_a_rectangle_is_a_ring_of_the_width():
    mask = rectangle(100, 100, 30, 20, 70, 60)  # 40 x 40
    boundary = mask_boundary(mask, 3)
    assert boundary.dtype == bool and boundary.shape == mask.shape
    assert boundary.sum() == 40 * 40 - 34 * 34
    assert np.array_equal(boundary, mask & ~rectangle(100, 100, 33, 23, 67, 57))
    # a mask thinner than twice the width is all boundary
    thin = rectangle(100, 100, 10, 10, 15, 90)
    assert np.array_equal(mask_boundary(thin, 3), thin)
    assert not mask_boundary(np.zeros((5, 7), bool), 2).any()


def test_image_border_counts_as_background():
    whole = np.ones((20, 30), bool)
    assert mask_boundary(whole, 2).sum() == 20 * 30 - 16 * 26
    # a mask cut by the left border has a boundary along it
    cut = rectangle(50, 50, 10, 0, 40, 25)
    assert np.array_equal(mask_boundary(cut, 2), cut & ~rectangle(50, 50, 12, 2, 38, 23))


@pytest.mark.parametrize("width", [1, 2, 5, 16])
def test_boundary_matches_scipy_erosion(width):
    rng = np.random.default_rng(width)
    for _ in range(6):
        # blobs of all sizes, some at the image border, some with holes
        noise = ndimage.gaussian_filter(rng.random((97, 131)), sigma=rng.uniform(2, 8))
        mask = noise > np.quantile(noise, rng.uniform(0.3, 0.95))
        assert np.array_equal(mask_boundary(mask, width), scipy_boundary(mask, width))
        assert np.array_equal(
            mask_boundary(mask.astype(np.uint8), width), scipy_boundary(mask, width)
        )


def test_boundary_rejects_a_batch_of_masks():
    with pytest.raises(ValueError, match=r"one \(H, W\) mask, got shape \(2, 5, 5\)"):
        mask_boundary(np.ones((2, 5, 5), bool), 1)


# --- COCO evaluation ---------------------------------------------------------------------


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask, np.uint8))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def coco_ground_truth(objects, images=((1, 200, 300),), categories=((3, "cat"), (7, "dog"))):
    """COCO instance annotations: ``objects`` are (image id, category id, mask, iscrowd)."""
    annotations = []
    for index, (image_id, category_id, mask, iscrowd) in enumerate(objects, start=1):
        annotations.append(
            {
                "id": index,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": _rle(mask),
                "area": int(mask.sum()),
                "bbox": list(
                    mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask, np.uint8)))
                ),
                "iscrowd": iscrowd,
            }
        )
    return {
        "images": [
            {"id": i, "height": h, "width": w, "file_name": f"{i}.jpg"} for i, h, w in images
        ],
        "annotations": annotations,
        "categories": [{"id": c, "name": name} for c, name in categories],
    }


def coco_object(dataset):
    coco = COCO()
    coco.dataset = json.loads(json.dumps(dataset))
    coco.createIndex()
    return coco


def result(image_id, category_id, mask, score):
    return {
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": _rle(mask),
        "score": score,
    }


def test_boundary_ap_of_one_detection_is_set_by_the_lower_iou():
    height, width = 200, 300
    truth = rectangle(height, width, 50, 60, 150, 180)  # 100 x 120
    grown = rectangle(height, width, 48, 58, 152, 182)  # 2 pixels larger on every side
    coco_gt = coco_object(coco_ground_truth([(1, 3, truth, 0)]))
    d = boundary_width(height, width)
    mask_iou = iou(grown, truth)
    boundary_iou = iou(scipy_boundary(grown, d), scipy_boundary(truth, d))
    assert 0.5 < boundary_iou < mask_iou < 0.95  # the two APs differ

    _, mask_ap = evaluate_mask_ap(coco_gt, [result(1, 3, grown, 0.9)])
    _, boundary_ap = evaluate_mask_ap(
        coco_gt, [result(1, 3, grown, 0.9)], boundary_dilation_ratio=0.02
    )
    assert mask_ap["AP"] == pytest.approx(single_pair_ap(mask_iou))
    assert boundary_ap["AP"] == pytest.approx(single_pair_ap(min(mask_iou, boundary_iou)))
    assert boundary_ap["AP"] < mask_ap["AP"]
    assert boundary_ap["AP50"] == 100 and math.isnan(boundary_ap["APs"])

    # an exact prediction scores 100 either way
    for ratio in (None, 0.02):
        _, exact = evaluate_mask_ap(
            coco_gt, [result(1, 3, truth, 0.9)], boundary_dilation_ratio=ratio
        )
        assert exact["AP"] == pytest.approx(100)


def test_wider_boundaries_give_a_higher_boundary_iou():
    height, width = 200, 300
    truth = rectangle(height, width, 50, 60, 150, 180)
    grown = rectangle(height, width, 49, 59, 151, 181)
    coco_gt = coco_object(coco_ground_truth([(1, 3, truth, 0)]))
    aps = []
    for ratio in (0.01, 0.02, 0.1):
        coco_eval, _ = evaluate_mask_ap(
            coco_gt, [result(1, 3, grown, 0.9)], boundary_dilation_ratio=ratio
        )
        d = boundary_width(height, width, ratio)
        expected = min(iou(grown, truth), iou(scipy_boundary(grown, d), scipy_boundary(truth, d)))
        assert coco_eval.ious[1, 3][0, 0] == pytest.approx(expected)
        aps.append(coco_eval.stats[0])
    assert aps[0] < aps[1] < aps[2]


def _scene(seed):
    """Two images, two categories, crowd regions, detections of varying quality."""
    rng = np.random.default_rng(seed)
    images = ((1, 120, 160), (2, 90, 90))
    objects, results = [], []
    for image_id, height, width in images:
        for category in (3, 7):
            for _ in range(3):
                top, left = rng.integers(0, height - 30), rng.integers(0, width - 30)
                size = rng.integers(10, 30, 2)
                truth = rectangle(height, width, top, left, top + size[0], left + size[1])
                objects.append((image_id, category, truth, int(rng.random() < 0.2)))
                for _ in range(2):
                    shift = rng.integers(-4, 5, 4)
                    box = np.clip(
                        [
                            top + shift[0],
                            left + shift[1],
                            top + size[0] + shift[2],
                            left + size[1] + shift[3],
                        ],
                        0,
                        [height, width, height, width],
                    )
                    detected = rectangle(height, width, *box)
                    results.append(result(image_id, category, detected, float(rng.random())))
    return coco_ground_truth(objects, images), results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairs_below_the_lowest_threshold_do_not_change_the_ap(seed):
    dataset, results = _scene(seed)
    evaluations = []
    for all_pairs in (False, True):
        coco_gt = coco_object(dataset)
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds fields
        coco_eval = BoundaryCOCOeval(coco_gt, coco_dt, all_pairs=all_pairs)
        coco_eval.evaluate()
        coco_eval.accumulate()
        evaluations.append(coco_eval)
    lazy, exact = evaluations
    np.testing.assert_array_equal(lazy.eval["precision"], exact.eval["precision"])
    np.testing.assert_array_equal(lazy.eval["recall"], exact.eval["recall"])
    differs = 0
    for key, ious in exact.ious.items():
        if len(ious) == 0:
            continue
        above = ious >= 0.5
        np.testing.assert_array_equal(lazy.ious[key][above], ious[above])
        assert (lazy.ious[key] >= ious).all()
        differs += int((lazy.ious[key] != ious).sum())
    assert differs > 0  # some pairs were left at their mask IoU


def test_crowd_regions_keep_the_crowd_iou():
    dataset, results = _scene(0)
    coco_gt = coco_object(dataset)
    coco_eval = BoundaryCOCOeval(coco_gt, coco_gt.loadRes(results), all_pairs=True)
    coco_eval.evaluate()
    crowd_columns = lowered = 0
    for (image_id, category_id), ious in coco_eval.ious.items():
        if len(ious) == 0:
            continue
        gts = coco_eval._gts[image_id, category_id]
        dts = sorted(coco_eval._dts[image_id, category_id], key=lambda d: -d["score"])
        mask_ious = mask_utils.iou(
            [d["segmentation"] for d in dts],
            [g["segmentation"] for g in gts],
            [g["iscrowd"] for g in gts],
        )
        for column, g in enumerate(gts):
            if g["iscrowd"]:
                crowd_columns += 1
                np.testing.assert_allclose(ious[:, column], mask_ious[:, column])
            else:
                lowered += int((ious[:, column] < mask_ious[:, column] - 1e-9).sum())
    assert crowd_columns and lowered


def test_no_predictions_give_nan():
    coco_gt = coco_object(coco_ground_truth([(1, 3, rectangle(200, 300, 5, 5, 50, 50), 0)]))
    coco_eval, results = evaluate_mask_ap(
        coco_gt, [], boundary_dilation_ratio=0.02, class_names=["cat", "dog"]
    )
    assert coco_eval is None
    assert set(results) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-cat", "AP-dog"}
    assert all(math.isnan(v) for v in results.values())


# --- the evaluators --------------------------------------------------------------------------


@pytest.fixture
def registered_boxes(tmp_path):
    """A COCO instance data set (category ids 3 and 7, contiguous 0 and 1) and the images'
    ground-truth masks."""
    height, width = 200, 300
    masks = {
        "cat": rectangle(height, width, 50, 60, 150, 180),
        "dog": rectangle(height, width, 20, 200, 60, 280),
    }
    dataset = coco_ground_truth([(1, 3, masks["cat"], 0), (1, 7, masks["dog"], 0)])
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(dataset))
    name = f"test_boundary_ap_{tmp_path.name}"
    MetadataCatalog.get(name).set(
        json_file=str(json_file),
        evaluator_type="coco",
        thing_classes=["cat", "dog"],
        thing_dataset_id_to_contiguous_id={3: 0, 7: 1},
    )
    yield name, masks
    MetadataCatalog.remove(name)


def _process(evaluator, masks_and_classes):
    instances = Instances(next(iter(masks_and_classes))[0].shape)
    instances.pred_masks = torch.from_numpy(np.stack([m for m, _ in masks_and_classes]))
    instances.pred_classes = torch.tensor([c for _, c in masks_and_classes])
    instances.scores = torch.linspace(0.9, 0.5, len(masks_and_classes))
    instances.pred_boxes = Boxes(torch.zeros(len(masks_and_classes), 4))
    evaluator.reset()
    evaluator.process([{"image_id": 1}], [{"instances": instances}])
    return evaluator.evaluate()


def _cfg(*opts):
    return load_config(
        "configs/shapes/maskformer2_R18_instance.yaml",
        ["MODEL.DEVICE", "cpu", *opts],
    )


def test_evaluator_reports_boundary_ap_with_the_class_names(registered_boxes, tmp_path):
    name, masks = registered_boxes
    cfg = _cfg("TEST.BOUNDARY_AP.ENABLED", "True")
    evaluator = build_evaluator(cfg, name, str(tmp_path / "out"))
    assert isinstance(evaluator, PartialCOCOEvaluator)
    coarse_cat = rectangle(200, 300, 48, 58, 152, 182)
    results = _process(evaluator, [(coarse_cat, 0), (masks["dog"], 1)])
    segm, boundary = results["segm"], results["boundary"]
    assert set(boundary) == set(segm)  # AP, AP50, ..., AP-cat, AP-dog
    d = boundary_width(200, 300)
    cat_boundary_iou = iou(scipy_boundary(coarse_cat, d), scipy_boundary(masks["cat"], d))
    assert segm["AP-cat"] == pytest.approx(single_pair_ap(iou(coarse_cat, masks["cat"])))
    assert boundary["AP-cat"] == pytest.approx(single_pair_ap(cat_boundary_iou))
    assert boundary["AP-dog"] == pytest.approx(100) and segm["AP-dog"] == pytest.approx(100)
    assert boundary["AP"] == pytest.approx((boundary["AP-cat"] + 100) / 2)
    # the saved results are those the tool reads: it gives the same figures
    tool = load_script("tools/evaluate_coco_boundary_ap.py")
    coco_gt, predictions = tool.load_inputs(
        MetadataCatalog.get(name).json_file, str(tmp_path / "out" / "coco_instances_results.json")
    )
    figures = tool.evaluate(coco_gt, predictions, 0.02)
    assert figures["boundary"] == pytest.approx(boundary, nan_ok=True)
    assert figures["segm"] == pytest.approx(segm, nan_ok=True)


def test_boundary_ap_is_off_by_default(registered_boxes, tmp_path):
    name, masks = registered_boxes
    evaluator = build_evaluator(_cfg(), name, str(tmp_path))
    results = _process(evaluator, [(masks["cat"], 0)])
    assert "segm" in results and "boundary" not in results


def test_bad_dilation_ratio_names_the_key(registered_boxes, tmp_path):
    name, _ = registered_boxes
    cfg = _cfg("TEST.BOUNDARY_AP.ENABLED", "True", "TEST.BOUNDARY_AP.DILATION_RATIO", "0.0")
    with pytest.raises(ValueError, match=r"TEST\.BOUNDARY_AP\.DILATION_RATIO must be > 0"):
        build_evaluator(cfg, name, str(tmp_path))


# --- tools/evaluate_coco_boundary_ap.py ------------------------------------------------------


@pytest.fixture
def tool():
    return load_script("tools/evaluate_coco_boundary_ap.py")


@pytest.fixture
def saved_scene(tmp_path):
    dataset, results = _scene(3)
    gt_file, dt_file = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_file.write_text(json.dumps(dataset))
    dt_file.write_text(json.dumps(results))
    return dataset, results, str(gt_file), str(dt_file)


def test_tool_prints_and_writes_both_aps(tool, saved_scene, tmp_path, capsys):
    dataset, results, gt_file, dt_file = saved_scene
    output = tmp_path / "figures.json"
    assert (
        tool.main(["--gt-json-file", gt_file, "--dt-json-file", dt_file, "--output", str(output)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "| mask |" in printed and "| boundary |" in printed
    figures = json.loads(output.read_text())
    assert json.loads(printed[printed.rindex("\n{") :]) == figures
    assert figures["images"] == 2 and figures["predictions"] == len(results)
    coco_gt = coco_object(dataset)
    _, expected = evaluate_mask_ap(
        coco_gt, results, boundary_dilation_ratio=0.02, class_names=["cat", "dog"]
    )
    assert figures["boundary"] == pytest.approx(expected, nan_ok=True)
    assert figures["boundary"]["AP"] < figures["segm"]["AP"]


def test_tool_scores_only_predicted_images_when_asked(tool, saved_scene, tmp_path, capsys):
    dataset, results, gt_file, _ = saved_scene
    dt_file = tmp_path / "image1.json"
    dt_file.write_text(json.dumps([r for r in results if r["image_id"] == 1]))
    argv = ["--gt-json-file", gt_file, "--dt-json-file", str(dt_file), "--output"]
    assert tool.main([*argv, str(tmp_path / "all.json"), "--dilation-ratio", "0.05"]) == 0
    assert (
        tool.main(
            [
                *argv,
                str(tmp_path / "one.json"),
                "--dilation-ratio",
                "0.05",
                "--predicted-images-only",
            ]
        )
        == 0
    )
    every, predicted = (json.loads((tmp_path / f).read_text()) for f in ("all.json", "one.json"))
    assert (every["images"], predicted["images"]) == (2, 1)
    assert predicted["dilation_ratio"] == 0.05
    # image 2's objects are missed in one and not scored in the other
    assert every["boundary"]["AP50"] < predicted["boundary"]["AP50"]


def _argv(saved_scene, tmp_path, *, gt=None, dt=None, extra=()):
    """The tool's arguments for the saved scene, with the annotations or results replaced by
    ``gt`` or ``dt`` (text, or JSON-able data) where given."""
    _, _, gt_file, dt_file = saved_scene
    files = {}
    for name, content in (("gt", gt), ("dt", dt)):
        if content is not None:
            path = tmp_path / f"broken_{name}.json"
            path.write_text(content if isinstance(content, str) else json.dumps(content))
            files[name] = str(path)
    return [
        "--gt-json-file",
        files.get("gt", gt_file),
        "--dt-json-file",
        files.get("dt", dt_file),
        *extra,
    ]


def _without(prediction, key):
    return {k: v for k, v in prediction.items() if k != key}


BAD_INPUTS = {
    "missing gt": (
        lambda first, tmp: {"extra": ["--gt-json-file", str(tmp / "nowhere.json")]},
        "annotation file '.*nowhere.json' does not exist",
    ),
    "gt not json": (
        lambda first, tmp: {"gt": "{images"},
        "'.*broken_gt.json' is not readable JSON",
    ),
    "gt not coco": (lambda first, tmp: {"gt": {"images": []}}, "is not COCO instance annotations"),
    "dt not a list": (lambda first, tmp: {"dt": {"annotations": [first]}}, "is not a COCO results"),
    "dt without score": (
        lambda first, tmp: {"dt": [_without(first, "score")]},
        r"prediction 0 lacks \['score'\]",
    ),
    "dt polygon": (
        lambda first, tmp: {"dt": [{**first, "segmentation": [[1, 1, 9, 1, 9, 9, 1, 9]]}]},
        "prediction 0 has a polygon segmentation",
    ),
    "dt other image": (
        lambda first, tmp: {"dt": [first, {**first, "image_id": 99}]},
        "prediction 1 is for image 99, which the annotations lack",
    ),
    "dt contiguous ids": (
        lambda first, tmp: {"dt": [{**first, "category_id": 0}]},
        "prediction 0 has category 0, which the annotations lack",
    ),
    "bad ratio": (
        lambda first, tmp: {"extra": ["--dilation-ratio", "0"]},
        "--dilation-ratio must be > 0",
    ),
    "no output folder": (
        lambda first, tmp: {"extra": ["--output", str(tmp / "missing" / "figures.json")]},
        "--output '.*missing/figures.json': its folder does not exist",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_tool_explains_bad_input(tool, saved_scene, tmp_path, capsys, case):
    """One line that names the file, the prediction or the option; exit status 2."""
    change, message = BAD_INPUTS[case]
    argv = _argv(saved_scene, tmp_path, **change(saved_scene[1][0], tmp_path))
    assert tool.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and len(error.splitlines()) == 1
    assert re.search(message, error), error


def test_benchmark_reports_the_same_ap_for_both_boundary_variants(capsys):
    benchmark = load_script("tools/benchmark_boundary_ap.py")
    benchmark.main(["--images", "3", "--objects", "3", "--repeats", "1"])
    out = capsys.readouterr().out
    report = json.loads(out[out.index("\n{") :])
    assert (report["images"], report["detections"]) == (3, 3 * 100)
    rows = {row["variant"]: row for row in report["rows"]}
    assert list(rows) == ["mask", "boundary", "boundary-all-pairs"]
    assert rows["boundary"]["AP"] == rows["boundary-all-pairs"]["AP"]
    assert all(row["median_s"] > 0 and len(row["times_s"]) == 1 for row in rows.values())
    assert rows["mask"]["vs_mask"] == 1


def test_evaluators_without_boundary_ap_say_so(registered_boxes, tmp_path, caplog):
    from mask2former.engine import evaluation

    name, _ = registered_boxes
    for enabled, expected in (("False", 0), ("True", 1)):
        caplog.clear()
        cfg = _cfg("TEST.BOUNDARY_AP.ENABLED", enabled)
        with caplog.at_level(logging.WARNING, logger=evaluation.__name__):
            evaluation._cityscapes_instances(cfg, name, str(tmp_path))
        messages = [r.getMessage() for r in caplog.records if "BOUNDARY_AP" in r.getMessage()]
        assert len(messages) == expected
    assert repr(name) in messages[0] and "Cityscapes" in messages[0]
