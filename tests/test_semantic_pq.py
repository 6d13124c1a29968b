"""PQ^St of semantic segmentation (mask2former/engine/semantic_pq.py) against panopticapi, the
COCO panoptic evaluation, on the same maps written as panoptic PNGs; and
tools/evaluate_pq_for_semantic_segmentation.py on a registered data set with predictions
written by Detectron2's SemSegEvaluator."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from helpers import load_script
from panopticapi.evaluation import pq_compute_single_core
from panopticapi.utils import id2rgb
from PIL import Image

from mask2former.engine.semantic_pq import SemanticPQ

IGNORE = 255


def random_maps(rng, num_classes, height=40, width=56):
    """A ground truth of class blocks with an ignored band, and a prediction that moves,
    swaps, drops and adds classes."""
    gt = np.zeros((height, width), np.int64)
    present = rng.choice(num_classes, size=rng.integers(2, num_classes + 1), replace=False)
    edges = np.sort(rng.choice(np.arange(1, width), size=len(present) - 1, replace=False))
    for label, (start, stop) in zip(present, zip([0, *edges], [*edges, width])):
        gt[:, start:stop] = label
    prediction = np.roll(gt, rng.integers(-6, 7), axis=1)
    if rng.random() < 0.5:  # a class where the ground truth has none
        top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
        prediction[top : top + 8, left : left + 8] = rng.integers(0, num_classes)
    gt[rng.integers(0, height - 5) :][:5] = IGNORE  # an ignored band of 5 rows
    if rng.random() < 0.3:  # a class predicted mostly on ignored pixels
        band = np.flatnonzero((gt == IGNORE).any(axis=1))
        prediction[band[0] : band[0] + 4, :10] = num_classes - 1
    if rng.random() < 0.3:
        prediction[prediction == present[0]] = -1  # a class left unpredicted
    return gt, prediction


def panopticapi_pq(pairs, num_classes, folder):
    """PQ, SQ, RQ (in %) and each class's PQ from panopticapi, each class of each map one
    segment (id = class + 1; ignored and unpredicted pixels id 0, panopticapi's VOID)."""
    annotations = []
    for index, (gt, prediction) in enumerate(pairs):
        pair = []
        for kind, labels in (("gt", np.where(gt == IGNORE, -1, gt)), ("pred", prediction)):
            ids = labels + 1
            Image.fromarray(id2rgb(ids.astype(np.uint32))).save(folder / f"{kind}{index}.png")
            segments = [
                {
                    "id": int(k) + 1,
                    "category_id": int(k),
                    "iscrowd": 0,
                    "area": int((labels == k).sum()),
                }
                for k in np.unique(labels[labels >= 0])
            ]
            pair.append(
                {"image_id": index, "file_name": f"{kind}{index}.png", "segments_info": segments}
            )
        annotations.append(pair)
    categories = {k: {"id": k, "isthing": 0} for k in range(num_classes)}
    with contextlib.redirect_stdout(io.StringIO()):
        stat = pq_compute_single_core(0, annotations, str(folder), str(folder), categories)
    average, per_class = stat.pq_average(categories, isthing=None)
    per_class_pq = {
        k: 100 * per_class[k]["pq"] if stat[k].tp + stat[k].fp + stat[k].fn else math.nan
        for k in range(num_classes)
    }
    return (
        {name: 100 * average[name.lower()] for name in ("PQ", "SQ", "RQ")},
        average["n"],
        per_class_pq,
    )


@pytest.mark.parametrize("seed", range(4))
def test_matches_panopticapi(seed, tmp_path):
    rng = np.random.default_rng(seed)
    num_classes = 6
    pairs = [random_maps(rng, num_classes) for _ in range(5)]
    pq = SemanticPQ(num_classes, IGNORE)
    for gt, prediction in pairs:
        pq.add(gt, prediction)
    results = pq.results()
    expected, classes, per_class = panopticapi_pq(pairs, num_classes, tmp_path)
    for name in ("PQ", "SQ", "RQ"):
        assert results[name] == pytest.approx(expected[name], abs=1e-9)
    assert results["classes"] == classes
    for k in range(num_classes):
        assert results[f"PQ-{k}"] == pytest.approx(per_class[k], abs=1e-9, nan_ok=True)
    # the maps exercise every rule
    assert pq.tp.sum() and pq.fp.sum() and pq.fn.sum() and pq.images == 5


def test_rules_by_hand():
    pq = SemanticPQ(3, IGNORE)
    gt = np.zeros((4, 10), np.int64)
    gt[:, 5:] = 1
    prediction = gt.copy()
    prediction[:, 4] = 1  # class 0: IoU 16/20, matched; class 1: 20/24, matched
    pq.add(gt, prediction)
    assert pq.tp.tolist() == [1, 1, 0] and pq.fp.sum() == 0 and pq.fn.sum() == 0
    np.testing.assert_allclose(pq.iou, [16 / 20, 20 / 24, 0])
    # IoU exactly 0.5 does not match: a false negative and a false positive
    pq = SemanticPQ(3, IGNORE)
    gt = np.zeros((2, 4), np.int64)
    pq.add(gt, np.array([[0, 0, 2, 2], [0, 0, 2, 2]]))
    assert pq.tp.tolist() == [0, 0, 0]
    assert pq.fn.tolist() == [1, 0, 0] and pq.fp.tolist() == [1, 0, 1]
    # predicted pixels on ignored ground truth leave the union; a segment more than half on
    # them is no false positive
    pq = SemanticPQ(3, IGNORE)
    gt = np.array([[0, 0, IGNORE, IGNORE, IGNORE]])
    pq.add(gt, np.array([[0, 0, 0, 2, 2]]))
    assert pq.tp.tolist() == [1, 0, 0] and pq.iou[0] == 1.0 and pq.fp.sum() == 0
    results = pq.results(["a", "b", "c"])
    assert (results["PQ"], results["classes"], results["PQ-a"]) == (100.0, 1, 100.0)
    assert math.isnan(results["PQ-b"])


def test_bad_maps_are_named():
    pq = SemanticPQ(3, IGNORE)
    with pytest.raises(
        ValueError, match=r"img\.png: the ground truth is \(2, 3\) and the prediction \(3, 2\)"
    ):
        pq.add(np.zeros((2, 3)), np.zeros((3, 2)), where="img.png")
    with pytest.raises(
        ValueError, match=r"the ground truth holds \[3, 7\], neither a class \(0 to 2\)"
    ):
        pq.add(np.array([[0, 3, 7, IGNORE]]), np.zeros((1, 4), np.int64))
    with pytest.raises(ValueError, match=r"the prediction holds \[5\]"):
        pq.add(np.zeros((1, 2), np.int64), np.array([[0, 5]]))
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        pq.results(["a", "b"])
    assert math.isnan(SemanticPQ(2).results()["PQ"])  # no image


# --- tools/evaluate_pq_for_semantic_segmentation.py -----------------------------------------

CLASSES = ["sky", "road", "tree", "car"]
DATASET_IDS = [10, 20, 30, 40]  # SemSegEvaluator writes these ids to the predictions file


@pytest.fixture
def registered(tmp_path):
    """A semantic data set of three images with dataset ids, and its ground-truth maps."""
    rng = np.random.default_rng(7)
    name = f"test_semantic_pq_{tmp_path.name}"
    records, maps = [], []
    for index in range(3):
        gt, prediction = random_maps(rng, len(CLASSES))
        prediction = np.maximum(prediction, 0)  # SemSegEvaluator predicts every pixel
        label_file = tmp_path / f"label{index}.png"
        Image.fromarray(gt.astype(np.uint8)).save(label_file)
        records.append(
            {
                "file_name": str(tmp_path / f"image{index}.jpg"),
                "sem_seg_file_name": str(label_file),
                "height": gt.shape[0],
                "width": gt.shape[1],
            }
        )
        maps.append((gt, prediction))
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        stuff_classes=CLASSES,
        ignore_label=IGNORE,
        evaluator_type="sem_seg",
        stuff_dataset_id_to_contiguous_id={d: k for k, d in enumerate(DATASET_IDS)},
    )
    yield name, records, maps
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def write_predictions(path, name, records, maps):
    """Predictions as SemSegEvaluator writes them (RLE per class, dataset ids)."""
    evaluator = SemSegEvaluator(name, distributed=False)
    entries = []
    for record, (_, prediction) in zip(records, maps):
        entries += evaluator.encode_json_sem_seg(prediction, record["file_name"])
    path.write_text(json.dumps(entries))
    return str(path)


@pytest.fixture
def tool():
    return load_script("tools/evaluate_pq_for_semantic_segmentation.py")


def test_tool_scores_semseg_evaluator_predictions(tool, registered, tmp_path, capsys):
    name, records, maps = registered
    json_file = write_predictions(
        tmp_path / "sem_seg_predictions.json", name, records[:2], maps[:2]
    )
    output = tmp_path / "figures.json"
    assert (
        tool.main(["--dataset-name", name, "--json-file", json_file, "--output", str(output)]) == 0
    )
    figures = json.loads(output.read_text())
    printed = capsys.readouterr().out
    assert "| all (stuff) |" in printed and json.loads(printed[printed.index("\n{") :]) == figures
    assert (figures["images"], figures["images_without_predictions"]) == (2, 1)
    expected = SemanticPQ(len(CLASSES), IGNORE)
    for gt, prediction in maps[:2]:
        expected.add(gt, prediction)
    for key, value in expected.results(CLASSES).items():
        assert figures[key] == pytest.approx(value, nan_ok=True), key


def test_tool_explains_bad_input(tool, registered, tmp_path, capsys):
    name, records, maps = registered
    good = write_predictions(tmp_path / "good.json", name, records, maps)
    entries = json.loads((tmp_path / "good.json").read_text())

    def run(*argv):
        assert tool.main(list(argv)) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and len(error.splitlines()) == 1
        return error

    assert "is not registered. Did you mean" in run(
        "--dataset-name", name[:-1] + "x", "--json-file", good
    )
    assert "does not exist" in run(
        "--dataset-name", name, "--json-file", str(tmp_path / "none.json")
    )
    wrong_ids = tmp_path / "contiguous.json"
    wrong_ids.write_text(json.dumps([{**e, "category_id": 3} for e in entries]))
    error = run("--dataset-name", name, "--json-file", str(wrong_ids))
    assert "image0.jpg: a prediction has category_id 3, which is not a class" in error
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps([{**e, "file_name": "/data/other.jpg"} for e in entries]))
    error = run("--dataset-name", name, "--json-file", str(elsewhere))
    assert "predictions for 1 images that are not in data set" in error and "other.jpg" in error
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps([{"file_name": records[0]["file_name"]}]))
    assert "entry 0 lacks ['category_id', 'segmentation']" in run(
        "--dataset-name", name, "--json-file", str(incomplete)
    )
    assert "its folder does not exist" in run(
        "--dataset-name", name, "--json-file", good, "--output", str(tmp_path / "no" / "f.json")
    )
