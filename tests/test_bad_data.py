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
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image
from torch import nn

import mask2former.data  # noqa: F401  only registration
from mask2former import modeling as _modeling  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.data.bad_samples import TooManyBadSamplesError
from mask2former.data.check import check_dataset, exclude_entries, main
from mask2former.data.datasets import (
    panoptic_category_metadata,
    register_coco_panoptic_with_checks,
)
from mask2former.data.exclude import write_exclude_file
from mask2former.data.synthetic import (
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
# the tiny model of test_train_e2e.py, on 64 x 64 images without cropping
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.NORM_NUM_GROUPS", "8",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
    "INPUT.MIN_SIZE_TRAIN", f"({SIZE},)",
    "INPUT.MAX_SIZE_TRAIN", str(2 * SIZE),
    "INPUT.MIN_SIZE_TEST", str(SIZE),
    "INPUT.MAX_SIZE_TEST", str(2 * SIZE),
    "INPUT.CROP.ENABLED", "False",
    "INPUT.SIZE_DIVISIBILITY", str(SIZE),
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.BASE_LR", "0.001",
    "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TEST", "()",
    "TEST.EVAL_PERIOD", "0",
    "SEED", "1",
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


@pytest.fixture(autouse=True)
def _one_thread():
    """Train with one thread: on a shared 2-core machine two threads are many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
