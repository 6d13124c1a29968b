"""Long runs survive bad data: the data set checker, training and evaluation that skip and
report bad samples, and the stop on a non-finite loss.

Everything runs on a small copy of the synthetic shapes set (10 train / 6 val images of
64 x 64) with planted problems: a truncated JPEG, a text file named .jpg, a missing image, an
empty polygon, an out-of-range category id and a panoptic PNG with an unknown segment id.
"""

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from unittest import mock

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage
from helpers import TINY_TRAINING, run_gloo_processes
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image
from torch import nn

import mask2former.data  # noqa: F401  only registration
from mask2former import modeling as _modeling  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.data import bad_samples, build_dataset_mapper
from mask2former.data.bad_samples import TooManyBadSamplesError
from mask2former.data.check import check_dataset, exclude_entries, main
from mask2former.data.datasets import (
    panoptic_category_metadata,
    register_coco_instances_with_checks,
    register_coco_panoptic_with_checks,
    register_sem_seg_folder,
)
from mask2former.data.exclude import write_exclude_file
from mask2former.data.synthetic import (
    IGNORE_LABEL,
    SHAPES_CATEGORIES,
    SyntheticConfig,
    ensure_synthetic_dataset,
    synthetic_split_paths,
)
from mask2former.engine import MaskFormerTrainer
from mask2former.engine.train_loops import CheckedAMPTrainer, NonFiniteLossError
from mask2former.modeling.criterion import SetCriterion

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PANOPTIC_CONFIG = os.path.join(REPO, "configs", "shapes", "maskformer2_R18_panoptic.yaml")
SIZE = 64
SHAPES_STUFF_CLASSES = panoptic_category_metadata(SHAPES_CATEGORIES)["stuff_classes"]
# the tiny training of helpers.TINY_TRAINING, on 64 x 64 images without cropping
TINY = [
    *TINY_TRAINING,
    "INPUT.MIN_SIZE_TRAIN", f"({SIZE},)",
    "INPUT.MAX_SIZE_TRAIN", str(2 * SIZE),
    "INPUT.MIN_SIZE_TEST", str(SIZE),
    "INPUT.MAX_SIZE_TEST", str(2 * SIZE),
    "INPUT.CROP.ENABLED", "False",
    "INPUT.SIZE_DIVISIBILITY", str(SIZE),
    "DATASETS.TEST", "()",
]  # fmt: skip


def _load_json(path):
    with open(path) as f:
        return json.load(f)


def _dump_json(path, content):
    with open(path, "w") as f:
        json.dump(content, f)


def _plant_problems(root):
    """Plant the six problems in the train split; one unreadable image in the val split.

    Returns:
        {(problem kind, file with the problem)} that the checker must report for the train
        split's panoptic data set (whose metadata also names the instance JSON).
    """
    train = synthetic_split_paths(root, "train")
    image = {i: os.path.join(train["image_root"], f"{i:06d}.jpg") for i in range(10)}
    expected = set()

    data = open(image[1], "rb").read()
    open(image[1], "wb").write(data[: len(data) // 2])
    expected.add(("image_unreadable", image[1]))
    with open(image[2], "w") as f:
        f.write("not a JPEG, just text\n")
    expected.add(("image_unreadable", image[2]))
    os.remove(image[3])
    expected.add(("image_missing", image[3]))

    instances = _load_json(train["instances_json"])
    annotations = {i: [a for a in instances["annotations"] if a["image_id"] == i] for i in (4, 5)}
    assert annotations[4] and annotations[5], "the generator should draw shapes in these images"
    annotations[4][0]["segmentation"] = [[]]
    expected.add(("instance_empty", image[4]))
    annotations[5][0]["category_id"] = 99
    expected.add(("instance_unknown_category", image[5]))
    _dump_json(train["instances_json"], instances)

    png = os.path.join(train["panoptic_root"], "000006.png")
    ids = rgb2id(read_image(png, "RGB"))
    values, counts = np.unique(ids[ids > 0], return_counts=True)
    ys, xs = np.nonzero(ids == values[np.argmax(counts)])  # a few pixels of the largest segment
    ids[ys[:9], xs[:9]] = 999
    Image.fromarray(id2rgb(ids)).save(png)
    expected.add(("panoptic_unknown_segment", png))

    val_image = os.path.join(synthetic_split_paths(root, "val")["image_root"], "000002.jpg")
    with open(val_image, "w") as f:
        f.write("not a JPEG either\n")
    return expected


def _register(name, root, split, image_ids=None):
    """Register the planted split's panoptic view under ``name``, restricted to ``image_ids``
    (JSON files filtered into a folder of their own) when given."""
    paths = synthetic_split_paths(root, split)
    panoptic_json, instances_json = paths["panoptic_json"], paths["instances_json"]
    if image_ids is not None:
        folder = os.path.join(os.path.dirname(root), name)
        os.makedirs(folder, exist_ok=True)
        filtered = []
        for source in (panoptic_json, instances_json):
            content = _load_json(source)
            content["images"] = [i for i in content["images"] if i["id"] in image_ids]
            content["annotations"] = [
                a for a in content["annotations"] if a["image_id"] in image_ids
            ]
            filtered.append(os.path.join(folder, os.path.basename(source)))
            _dump_json(filtered[-1], content)
        panoptic_json, instances_json = filtered
    register_coco_panoptic_with_checks(
        name,
        panoptic_category_metadata(SHAPES_CATEGORIES),
        paths["image_root"],
        paths["panoptic_root"],
        panoptic_json,
        sem_seg_root=paths["sem_seg_root"],
        instances_json=instances_json,
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted set under ``DATASETS_ROOT/shapes``, registered as planted_train_panoptic,
    planted_clean_train_panoptic (its good images), planted_val_panoptic and
    planted_good_val_panoptic (the val images less the unreadable one)."""
    datasets_root = tmp_path_factory.mktemp("bad_data")
    root = str(datasets_root / "shapes")
    ensure_synthetic_dataset(root, SyntheticConfig(num_train=10, num_val=6, size=SIZE))
    expected = _plant_problems(root)
    _register("planted_train_panoptic", root, "train")
    _register("planted_clean_train_panoptic", root, "train", image_ids={0, 7, 8, 9})
    _register("planted_val_panoptic", root, "val")
    _register("planted_good_val_panoptic", root, "val", image_ids={0, 1, 3, 4, 5})
    return {"datasets_root": str(datasets_root), "root": root, "expected": expected}


# train with one thread (conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_checker_finds_exactly_the_planted_problems(planted):
    report = check_dataset("planted_train_panoptic", num_workers=2, show_progress=False)
    assert report.num_images == 10
    assert {(p.kind, p.file_name) for p in report.problems} == planted["expected"]
    assert len(report.problems) == len(planted["expected"])
    # each problem is tied to its image, for the exclude file
    assert {int(os.path.basename(p.image)[:6]) for p in report.problems} == {1, 2, 3, 4, 5, 6}
    assert {p.image_id for p in report.problems} == {1, 2, 3, 4, 5, 6}
    unknown = next(p for p in report.problems if p.kind == "panoptic_unknown_segment")
    assert "999" in unknown.detail
    category = next(p for p in report.problems if p.kind == "instance_unknown_category")
    assert "99" in category.detail
    # the same, checked in this process
    serial = check_dataset("planted_train_panoptic", num_workers=0, show_progress=False)
    assert serial.problems == report.problems
    clean = check_dataset("planted_clean_train_panoptic", num_workers=0, show_progress=False)
    assert clean.num_images == 4 and clean.problems == []


def test_checker_tells_the_instance_annotation_problems_apart(planted, tmp_path):
    val = synthetic_split_paths(planted["root"], "val")
    square = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]
    wrong_size = mask_util.encode(np.asfortranarray(np.ones((SIZE, 2 * SIZE), dtype=np.uint8)))
    wrong_size["counts"] = wrong_size["counts"].decode("ascii")
    segmentations = {
        None: [square],  # fine
        "instance_empty": [],
        "instance_degenerate": [[1.0, 2.0, 3.0, 4.0]],  # 2 points
        ("instance_degenerate", "zero area"): [[0.0, 0.0, 10.0, 10.0, 20.0, 20.0]],
        ("instance_degenerate", "not as a list"): square,  # a flat list: numbers as polygons
        "instance_out_of_image": [[-50.0, -50.0, -10.0, -50.0, -10.0, -10.0]],
        ("instance_out_of_image", "RLE"): wrong_size,
        ("instance_empty", "RLE"): mask_util.encode(np.zeros((SIZE, SIZE), np.uint8, "F")),
    }
    annotations = []
    for i, segmentation in enumerate(segmentations.values()):
        if isinstance(segmentation, dict) and isinstance(segmentation["counts"], bytes):
            segmentation = dict(segmentation, counts=segmentation["counts"].decode("ascii"))
        annotations.append(
            {"id": i + 1, "image_id": 0, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1],
             "area": 1, "segmentation": segmentation}
        )  # fmt: skip
    content = _load_json(val["instances_json"])
    content["images"] = content["images"][:1]
    content["annotations"] = annotations
    json_file = tmp_path / "instances.json"
    _dump_json(json_file, content)
    register_coco_instances_with_checks(
        "planted_annotations", {}, str(json_file), val["image_root"]
    )
    report = check_dataset("planted_annotations", num_workers=0, show_progress=False)
    # the flat list makes Detectron2's loader fail: reported, and the JSON checked all the same
    (loader,) = [p for p in report.problems if p.image is None]
    assert loader.kind == "dataset_unloadable" and "TypeError" in loader.detail
    found = {int(p.detail.split(":")[0].split()[1]): p for p in report.problems if p.image}
    for i, expected in enumerate(segmentations):
        if expected is None:
            assert i + 1 not in found
            continue
        kind, words = expected if isinstance(expected, tuple) else (expected, "")
        assert found[i + 1].kind == kind and words in found[i + 1].detail, found[i + 1]
    assert len(found) == len(segmentations) - 1


@pytest.mark.slow
def test_checker_command_line(planted, tmp_path):
    registration = tmp_path / "register_planted.py"
    registration.write_text(
        "from mask2former.data.datasets import panoptic_category_metadata, "
        "register_coco_panoptic_with_checks\n"
        "from mask2former.data.synthetic import SHAPES_CATEGORIES, synthetic_split_paths\n"
        f"paths = synthetic_split_paths({planted['root']!r}, 'train')\n"
        "register_coco_panoptic_with_checks('my_planted', "
        "panoptic_category_metadata(SHAPES_CATEGORIES), paths['image_root'], "
        "paths['panoptic_root'], paths['panoptic_json'], paths['sem_seg_root'], "
        "paths['instances_json'])\n"
    )
    exclude = tmp_path / "exclude.txt"
    command = [
        sys.executable, os.path.join(REPO, "datasets", "check_dataset.py"), "my_planted",
        "--import", str(registration), "--write-exclude", str(exclude), "--workers", "2",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]
    for kind, file_name in planted["expected"]:
        assert file_name in run.stdout, (kind, file_name)
    assert re.search(r"\| images with problems\s+\|\s+6 \|", run.stdout), run.stdout
    assert re.search(r"\| image unreadable\s+\|\s+2 \|", run.stdout), run.stdout
    entries = [line.split("#")[0].strip() for line in exclude.read_text().splitlines()]
    assert sorted(e for e in entries if e) == ["1", "2", "3", "4", "5", "6"]


def test_checker_names_an_unknown_data_set(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["shapes_trian_panoptic"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "shapes_trian_panoptic" in error and "shapes_train_panoptic" in error


def _cfg(output_dir, *opts):
    cfg = load_config(PANOPTIC_CONFIG, [*TINY, "OUTPUT_DIR", str(output_dir), *opts])
    cfg.freeze()
    return cfg


def _bad_sample_warnings(caplog):
    """Image file -> number of times training logged it as bad."""
    counts = {}
    for record in caplog.records:
        match = re.match(r"Bad sample in training: (\S+) \(", record.getMessage())
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


@pytest.mark.slow
def test_training_replaces_bad_samples_and_logs_each_file_once(planted, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="mask2former.data.bad_samples")
    # 10 images, 4 that panoptic training reads are bad (the instance-JSON problems are not
    # read by it); 6 iterations of 2 draw every image at least once; 2 DataLoader workers
    cfg = _cfg(
        tmp_path,
        "DATASETS.TRAIN", "('planted_train_panoptic',)",
        "DATALOADER.MAX_BAD_SAMPLE_FRACTION", "0.5",
        "DATALOADER.NUM_WORKERS", "2",
        "SOLVER.MAX_ITER", "6",
    )  # fmt: skip
    trainer = MaskFormerTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert (tmp_path / "model_final.pth").is_file()
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 6 and all(math.isfinite(v) for v, _ in losses)
    train = synthetic_split_paths(planted["root"], "train")["image_root"]
    bad = {os.path.join(train, f"{i:06d}.jpg") for i in (1, 2, 3, 6)}
    assert _bad_sample_warnings(caplog) == dict.fromkeys(bad, 1)
    reasons = {r.getMessage() for r in caplog.records}
    assert any("000006.png" in m and "999" in m for m in reasons), reasons
    count = trainer.storage.history("[metric]bad_samples").latest()
    assert count >= len(bad)


@pytest.mark.slow
def test_training_stops_past_the_bad_sample_fraction(planted, tmp_path):
    # 4 of 10 images are bad; at most 2 are allowed
    cfg = _cfg(
        tmp_path,
        "DATASETS.TRAIN", "('planted_train_panoptic',)",
        "DATALOADER.MAX_BAD_SAMPLE_FRACTION", "0.2",
        "SOLVER.MAX_ITER", "20",
    )  # fmt: skip
    trainer = MaskFormerTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(TooManyBadSamplesError) as error:
        trainer.train()
    message = str(error.value)
    assert "3 of the 10 images (30.0%)" in message
    assert "MAX_BAD_SAMPLE_FRACTION = 0.2" in message
    train = synthetic_split_paths(planted["root"], "train")["image_root"]
    listed = re.findall(r"^  (\S+\.jpg): ", message, flags=re.MULTILINE)
    assert len(listed) == 3
    assert set(listed) <= {os.path.join(train, f"{i:06d}.jpg") for i in (1, 2, 3, 6)}
    assert "check_dataset.py planted_train_panoptic" in message
    assert trainer.iter < cfg.SOLVER.MAX_ITER - 1


def test_wrong_image_folder_stops_a_data_loader_worker(planted, tmp_path):
    # every image is missing: the worker, which only meets bad samples, stops at once (with
    # the default fraction, 1% of 10 images) instead of retrying forever
    paths = synthetic_split_paths(planted["root"], "train")
    empty_folder = tmp_path / "images"
    empty_folder.mkdir()
    register_coco_panoptic_with_checks(
        "planted_wrong_path_panoptic",
        panoptic_category_metadata(SHAPES_CATEGORIES),
        str(empty_folder),
        paths["panoptic_root"],
        paths["panoptic_json"],
    )
    cfg = _cfg(
        tmp_path,
        "DATASETS.TRAIN", "('planted_wrong_path_panoptic',)",
        "DATALOADER.NUM_WORKERS", "1",
    )  # fmt: skip
    loader = bad_samples.build_train_loader(cfg, build_dataset_mapper(cfg, is_train=True))
    with pytest.raises(TooManyBadSamplesError, match="Stopping training: 1 of the 10 images"):
        next(iter(loader))


@pytest.mark.slow
def test_exclude_file_written_by_the_checker_removes_the_bad_images(planted, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mask2former.data.bad_samples")
    report = check_dataset("planted_train_panoptic", num_workers=0, show_progress=False)
    exclude = tmp_path / "exclude.txt"
    write_exclude_file(str(exclude), exclude_entries([report]))
    # no bad file is tolerated now
    cfg = _cfg(
        tmp_path,
        "DATASETS.TRAIN", "('planted_train_panoptic',)",
        "DATASETS.EXCLUDE_FILE", str(exclude),
        "DATALOADER.MAX_BAD_SAMPLE_FRACTION", "0.0",
        "SOLVER.MAX_ITER", "4",
    )  # fmt: skip
    trainer = MaskFormerTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert _bad_sample_warnings(caplog) == {}
    assert any("Left out 6 training images" in r.getMessage() for r in caplog.records)
    assert trainer.data_loader.bad_samples.dataset_size == 4


class _Oracle(nn.Module):
    """Predicts each input image's ground truth: every metric is 100 on the images it sees."""

    def __init__(self, dataset_name):
        super().__init__()
        self.records = {r["image_id"]: r for r in DatasetCatalog.get(dataset_name)}
        self.num_classes = len(SHAPES_CATEGORIES)

    def forward(self, inputs):
        outputs = []
        for x in inputs:
            record = self.records[x["image_id"]]
            pan = torch.as_tensor(rgb2id(read_image(record["pan_seg_file_name"], "RGB")))
            segments = [
                {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
                for s in record["segments_info"]
            ]
            things = [s for s in segments if s["isthing"]]
            instances = Instances(tuple(pan.shape))
            masks = torch.stack([pan == s["id"] for s in things])
            instances.pred_masks = masks
            instances.pred_boxes = BitMasks(masks).get_bounding_boxes()
            instances.pred_classes = torch.tensor([s["category_id"] for s in things])
            instances.scores = torch.ones(len(things))
            labels = torch.as_tensor(read_image(record["sem_seg_file_name"]).astype(np.int64))
            labels[labels >= self.num_classes] = 0  # ignored pixels: any class
            sem_seg = nn.functional.one_hot(labels, self.num_classes).permute(2, 0, 1).float()
            outputs.append(
                {"panoptic_seg": (pan.int(), segments), "instances": instances, "sem_seg": sem_seg}
            )
        return outputs


@pytest.mark.slow
def test_evaluation_leaves_an_unreadable_image_out_of_the_metrics(planted, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="mask2former.data.bad_samples")
    results = {}
    for name in ("planted_val_panoptic", "planted_good_val_panoptic"):
        cfg = _cfg(
            tmp_path / name,
            "DATASETS.TEST", f"('{name}',)",
            "DATALOADER.MAX_BAD_SAMPLE_FRACTION", "0.2",
        )  # fmt: skip
        results[name] = MaskFormerTrainer.test(cfg, _Oracle("planted_val_panoptic"))
    with_bad, good_only = results["planted_val_panoptic"], results["planted_good_val_panoptic"]
    assert with_bad["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert with_bad["segm"]["AP"] == pytest.approx(100.0)
    assert with_bad["sem_seg"]["mIoU"] == pytest.approx(100.0)
    assert with_bad.keys() == good_only.keys()
    for task, metrics in good_only.items():
        assert with_bad[task] == pytest.approx(metrics, nan_ok=True), task
    val = synthetic_split_paths(planted["root"], "val")["image_root"]
    unreadable = os.path.join(val, "000002.jpg")
    warnings = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith(f"Bad sample in evaluation on planted_val_panoptic: {unreadable}")
        for m in warnings
    )
    assert any(
        m.startswith("Evaluation on planted_val_panoptic: 1 of the 6 images") and unreadable in m
        for m in warnings
    ), warnings


def _planted_copy(planted, tmp_path):
    """A copy of the planted set (its val image 2 is unreadable) whose files a test may break,
    and the paths of its val split."""
    root = str(tmp_path / "shapes")
    shutil.copytree(planted["root"], root)
    return root, synthetic_split_paths(root, "val")


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _evaluate(dataset_name, output_dir, oracle):
    """MaskFormerTrainer.test of ``oracle`` on ``dataset_name``: (results, the image files the
    model was given)."""
    seen = set()
    oracle.register_forward_pre_hook(lambda _, args: seen.update(x["file_name"] for x in args[0]))
    cfg = _cfg(
        output_dir,
        "DATASETS.TEST", f"('{dataset_name}',)",
        "DATALOADER.MAX_BAD_SAMPLE_FRACTION", "0.7",
    )  # fmt: skip
    return MaskFormerTrainer.test(cfg, oracle), seen


def _evaluation_reports(caplog, dataset_name):
    """Image file -> the reasons evaluation on ``dataset_name`` logged it with; the final
    warnings that say how many images were left out."""
    reasons, left_out = {}, []
    for record in caplog.records:
        message = record.getMessage()
        match = re.match(
            rf"Bad sample in evaluation on {dataset_name}: (\S+) \((.*)\): left out", message
        )
        if match:
            reasons.setdefault(match.group(1), []).append(match.group(2))
        if message.startswith(f"Evaluation on {dataset_name}: "):
            left_out.append(message)
    return reasons, left_out


def test_evaluation_leaves_out_the_images_whose_panoptic_png_is_broken(planted, tmp_path, caplog):
    # panopticapi reads the panoptic PNGs only at the end, in COCOPanopticEvaluator.evaluate
    caplog.set_level(logging.WARNING, logger="mask2former.data.bad_samples")
    root, val = _planted_copy(planted, tmp_path)
    image = {i: os.path.join(val["image_root"], f"{i:06d}.jpg") for i in range(6)}
    png = {i: os.path.join(val["panoptic_root"], f"{i:06d}.png") for i in range(6)}
    os.remove(png[1])
    _truncate(png[3])
    Image.open(png[4]).resize((SIZE // 2, SIZE // 2), Image.NEAREST).save(png[4])
    _register("broken_png_val_panoptic", root, "val")
    _register("broken_png_good_val_panoptic", root, "val", image_ids={0, 5})
    results, seen = {}, {}
    for name in ("broken_png_val_panoptic", "broken_png_good_val_panoptic"):
        # the oracle predicts from the planted set's intact PNGs
        oracle = _Oracle("planted_val_panoptic")
        results[name], seen[name] = _evaluate(name, tmp_path / "output" / name, oracle)
    with_bad = results["broken_png_val_panoptic"]
    good_only = results["broken_png_good_val_panoptic"]
    # left out of every evaluator: the model never saw them
    assert seen["broken_png_val_panoptic"] == {image[0], image[5]}
    assert with_bad["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert with_bad.keys() == good_only.keys() == {"panoptic_seg", "bbox", "segm", "sem_seg"}
    for task, metrics in good_only.items():
        assert with_bad[task] == pytest.approx(metrics, nan_ok=True), task
    reasons, left_out = _evaluation_reports(caplog, "broken_png_val_panoptic")
    assert reasons.keys() == {image[1], image[2], image[3], image[4]}
    assert all(len(r) == 1 for r in reasons.values()), reasons  # once each
    for i in (1, 3, 4):
        assert png[i] in reasons[image[i]][0], reasons[image[i]]
    # one count for the unreadable image and the broken PNGs
    (warning,) = left_out
    assert warning.startswith("Evaluation on broken_png_val_panoptic: 4 of the 6 images")


class _OracleByFileName(nn.Module):
    """``_Oracle`` for inputs without image ids (a semantic folder data set): finds an input's
    id by its image's base name."""

    def __init__(self, oracle):
        super().__init__()
        self.oracle = oracle
        self.image_ids = {os.path.basename(r["file_name"]): i for i, r in oracle.records.items()}

    def forward(self, inputs):
        return self.oracle(
            [dict(x, image_id=self.image_ids[os.path.basename(x["file_name"])]) for x in inputs]
        )


def _evaluate_semantic_folder(val, name, tmp_path):
    """Register ``val``'s images and semantic PNGs as a folder semantic data set ``name`` and
    evaluate it on the ground truth (see _evaluate)."""
    register_sem_seg_folder(
        name, val["image_root"], val["sem_seg_root"], SHAPES_STUFF_CLASSES, IGNORE_LABEL
    )
    oracle = _OracleByFileName(_Oracle("planted_val_panoptic"))
    return _evaluate(name, tmp_path / "output", oracle)


def test_evaluation_leaves_out_an_image_whose_semantic_png_is_broken(planted, tmp_path, caplog):
    # holds without a change of ours: Detectron2's inference DatasetMapper reads the semantic
    # PNG that SemSegEvaluator reads again, so a broken one makes its sample bad in the loader
    caplog.set_level(logging.WARNING, logger="mask2former.data.bad_samples")
    _root, val = _planted_copy(planted, tmp_path)
    image = {i: os.path.join(val["image_root"], f"{i:06d}.jpg") for i in range(6)}
    _truncate(os.path.join(val["sem_seg_root"], "000001.png"))
    results, seen = _evaluate_semantic_folder(val, "broken_png_val_sem_seg", tmp_path)
    assert seen == {image[i] for i in (0, 3, 4, 5)}
    assert results["sem_seg"]["mIoU"] == pytest.approx(100.0)
    reasons, left_out = _evaluation_reports(caplog, "broken_png_val_sem_seg")
    assert reasons.keys() == {image[1], image[2]}
    assert all(len(r) == 1 for r in reasons.values()), reasons
    # Pillow's error names no file: the reason names the PNG beside the image
    assert os.path.join(val["sem_seg_root"], "000001.png") in reasons[image[1]][0]
    (warning,) = left_out
    assert warning.startswith("Evaluation on broken_png_val_sem_seg: 2 of the 6 images")


def test_evaluation_leaves_out_an_image_whose_semantic_labels_are_out_of_range(
    planted, tmp_path, caplog
):
    """SemSegEvaluator would count such pixels in another class's cell, silently."""
    caplog.set_level(logging.WARNING, logger="mask2former.data.bad_samples")
    _root, val = _planted_copy(planted, tmp_path)
    image = {i: os.path.join(val["image_root"], f"{i:06d}.jpg") for i in range(6)}
    png = os.path.join(val["sem_seg_root"], "000003.png")
    labels = np.array(Image.open(png))
    bad_value = len(SHAPES_STUFF_CLASSES) + 2  # neither a class nor the ignore label
    labels[:4, :4] = bad_value
    Image.fromarray(labels).save(png)
    results, seen = _evaluate_semantic_folder(val, "bad_values_val_sem_seg", tmp_path)
    assert seen == {image[i] for i in (0, 1, 4, 5)}
    assert results["sem_seg"]["mIoU"] == pytest.approx(100.0)
    reasons, left_out = _evaluation_reports(caplog, "bad_values_val_sem_seg")
    assert reasons.keys() == {image[2], image[3]}
    (reason,) = reasons[image[3]]
    assert png in reason and f"the values {bad_value}," in reason
    (warning,) = left_out
    assert warning.startswith("Evaluation on bad_values_val_sem_seg: 2 of the 6 images")


def _nan_dice_at(iteration):
    """A SetCriterion.forward whose loss_dice is NaN at one iteration."""
    forward = SetCriterion.forward

    def nan_dice(self, outputs, targets):
        from detectron2.utils.events import get_event_storage

        losses = forward(self, outputs, targets)
        if get_event_storage().iter == iteration:
            losses["loss_dice"] = losses["loss_dice"] * float("nan")
        return losses

    return nan_dice


@pytest.mark.slow
def test_nan_loss_stops_with_the_term_iteration_and_checkpoint_then_resume(
    planted, tmp_path, monkeypatch
):
    cfg = _cfg(
        tmp_path,
        "DATASETS.TRAIN", "('planted_clean_train_panoptic',)",
        "SOLVER.MAX_ITER", "6",
        "SOLVER.CHECKPOINT_PERIOD", "2",
    )  # fmt: skip
    monkeypatch.setattr(SetCriterion, "forward", _nan_dice_at(4))
    trainer = MaskFormerTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    message = str(error.value)
    assert "iteration 4" in message and "loss_dice = nan" in message
    assert "loss_ce = " not in message  # only the non-finite terms are named
    assert str(tmp_path / "model_0000003.pth") in message and "--resume" in message
    for name, param in trainer.model.named_parameters():
        assert torch.isfinite(param).all(), name
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    monkeypatch.undo()
    del trainer

    resumed = MaskFormerTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    resumed.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    iterations = [it for _, it in resumed.storage.history("total_loss").values()]
    assert iterations == [4, 5]


def test_nan_loss_before_any_checkpoint_says_so(tmp_path):
    from mask2former.engine.train_loops import non_finite_loss_message

    message = non_finite_loss_message(
        {"loss_ce": torch.tensor(1.0), "loss_mask": torch.tensor(float("inf"))}, 7, str(tmp_path)
    )
    assert "iteration 7" in message and "loss_mask = inf" in message
    assert "No checkpoint had been written" in message and str(tmp_path) in message


class _LossModel(nn.Module):
    """A linear model whose loss is NaN at its second call."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.calls = 0

    def forward(self, batch):
        self.calls += 1
        loss = self.linear(batch).float().pow(2).mean()
        return {"loss_x": loss * float("nan") if self.calls == 2 else loss}


@pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning")  # in Detectron2
def test_amp_float16_step_skipped_by_the_grad_scaler_is_only_counted():
    # Detectron2's AMPTrainer asserts that CUDA is there; its loss scaling runs on a CPU
    # GradScaler all the same (torch's CUDA autocast only affects CUDA tensors)
    model = _LossModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    loop = CheckedAMPTrainer(
        model,
        [batch] * 4,
        optimizer,
        grad_scaler=torch.amp.GradScaler("cpu"),
        precision=torch.float16,
        checkpoint_dir="unused",
    )
    changed = []
    with mock.patch.object(torch.cuda, "is_available", return_value=True), EventStorage(0) as st:
        loop.storage = st
        for iteration in range(4):
            loop.iter = st.iter = iteration
            before = model.linear.weight.detach().clone()
            loop.run_step()
            changed.append(not torch.equal(before, model.linear.weight))
    assert changed == [True, False, True, True]
    assert loop.skipped_steps == 1
    assert st.history("[metric]amp_skipped_steps").latest() == 1
    assert torch.isfinite(model.linear.weight).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_float16_on_cuda_counts_skipped_steps(tmp_path):
    from mask2former.engine import build_train_loop

    cfg = load_config(PANOPTIC_CONFIG, ["SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(tmp_path)])
    model = _LossModel().cuda()
    # The grad scaler starts at a scale of 2**16: the float16 gradients of an O(1) loss overflow
    # at the first step, which it skips too (seen on an H200). Small weights keep the loss and
    # its scaled gradients in float16's range, so that only the NaN step is skipped.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(0.01)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = torch.randn(8, 4, device="cuda")
    loop = build_train_loop(cfg, model, [batch] * 3, optimizer)
    assert isinstance(loop, CheckedAMPTrainer)
    with EventStorage(0) as st:
        loop.storage = st
        for iteration in range(3):
            loop.iter = st.iter = iteration
            loop.run_step()
    assert loop.skipped_steps == 1
    assert torch.isfinite(model.linear.weight).all()


@pytest.mark.slow
def test_two_training_processes_report_every_bad_file_once(planted, tmp_path):
    # the planted set as `shapes_*` under DETECTRON2_DATASETS, 2 gloo processes of 1 image each
    env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        DETECTRON2_DATASETS=planted["datasets_root"],
    )
    command = [
        sys.executable, os.path.join(REPO, "train_net.py"), "--num-gpus", "2",
        "--dist-url", "auto",  # a free port: the default is the same for every run of a user
        "--config-file", PANOPTIC_CONFIG, *TINY,
        "DATALOADER.MAX_BAD_SAMPLE_FRACTION", "0.5", "SOLVER.MAX_ITER", "6",
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    run = run_gloo_processes(command, tmp_path, cwd=REPO, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    train = synthetic_split_paths(planted["root"], "train")["image_root"]
    for i in (1, 2, 3, 6):
        image = os.path.join(train, f"{i:06d}.jpg")
        assert log.count(f"Bad sample in training: {image} (") == 1, (image, log[-3000:])
    assert "[metric]bad_samples: " in log
    assert (tmp_path / "model_final.pth").is_file()
