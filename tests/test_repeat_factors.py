"""DATALOADER.SAMPLER_TRAIN RepeatFactorTrainingSampler with instance, video, panoptic and
semantic records (mask2former/data/repeat_factors.py): each image's categories, the repeat
factors, the reading of semantic maps shared by the training processes, and the loader."""

import logging
import math
import os
import re

import numpy as np
import pytest
from detectron2.utils import comm
from helpers import TINY_TRAINING
from PIL import Image

import mask2former.data  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.data import bad_samples, build_dataset_mapper, repeat_factors
from mask2former.data.datasets.catalog_utils import get_datasets_root
from mask2former.data.repeat_factors import (
    build_repeat_factor_sampler,
    categories_per_image,
    image_categories,
)
from mask2former.data.synthetic import ensure_synthetic_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEMANTIC = os.path.join(REPO, "configs", "shapes", "maskformer2_R18_semantic.yaml")


def _png(path, labels):
    Image.fromarray(np.asarray(labels, dtype=np.uint8)).save(path)
    return str(path)


def test_categories_of_each_kind_of_record(tmp_path):
    instance = {"file_name": "a.jpg", "annotations": [{"category_id": 3}, {"category_id": 5}]}
    video = {
        "file_names": ["f0.jpg"],
        "annotations": [[{"category_id": 1}], [], [{"category_id": 2}]],
    }
    panoptic = {"file_name": "p.jpg", "segments_info": [{"id": 7, "category_id": 4}]}
    semantic = {
        "file_name": "s.jpg",
        "sem_seg_file_name": _png(tmp_path / "s.png", [[0, 3], [255, 3]]),
    }
    assert image_categories(instance, 255) == {3, 5}
    assert image_categories(video, 255) == {1, 2}
    assert image_categories(panoptic, 255) == {4}
    assert image_categories(semantic, 255) == {0, 3}  # the ignore label is no category
    with pytest.raises(ValueError, match=r"x\.jpg: DATALOADER.SAMPLER_TRAIN .* has none of them"):
        image_categories({"file_name": "x.jpg"}, 255)


def test_repeat_factors_of_panoptic_records():
    # category 0 in all 10 images, category 1 in one: f = 0.1, r = sqrt(0.5 / 0.1)
    records = [{"segments_info": [{"category_id": 0}]} for _ in range(10)]
    records[3]["segments_info"].append({"category_id": 1})
    cfg = load_config(SEMANTIC, ["DATALOADER.REPEAT_THRESHOLD", "0.5"])
    sampler = build_repeat_factor_sampler(cfg, records, ignore_label=255)
    factors = (sampler._int_part + sampler._frac_part).tolist()
    expected = [1.0] * 10
    expected[3] = math.sqrt(0.5 / 0.1)
    assert factors == pytest.approx(expected)


def test_training_processes_share_the_reading_of_semantic_maps(tmp_path, monkeypatch, caplog):
    records = [
        {"file_name": f"{i}.jpg", "sem_seg_file_name": _png(tmp_path / f"{i}.png", [[i % 3, 255]])}
        for i in range(5)
    ]
    records.append({"file_name": "p.jpg", "segments_info": [{"category_id": 9}]})
    records.append({"file_name": "bad.jpg", "sem_seg_file_name": str(tmp_path / "missing.png")})
    with caplog.at_level(logging.INFO, logger=repeat_factors.__name__):
        alone = categories_per_image(records, 255)
    assert alone == [{0}, {1}, {2}, {0}, {1}, {9}, set()]
    assert "missing.png" in caplog.text and "1 could not be read" in caplog.text

    # two processes: each reads its slice of the 6 semantic maps, and all get every result
    original = repeat_factors._semantic_labels
    read = {0: [], 1: []}
    shares = {}

    def run_as(rank):
        def reading(path, ignore_label):
            read[rank].append(os.path.basename(path))
            return original(path, ignore_label)

        def gather(mine):
            shares[rank] = mine
            return [shares.get(0, {}), shares.get(1, {})]

        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        monkeypatch.setattr(comm, "get_rank", lambda: rank)
        monkeypatch.setattr(comm, "all_gather", gather)
        monkeypatch.setattr(repeat_factors, "_semantic_labels", reading)
        return categories_per_image(records, 255)

    run_as(0)
    assert run_as(1) == alone  # the last to gather has both shares
    assert read == {0: ["0.png", "2.png", "4.png"], 1: ["1.png", "3.png", "missing.png"]}


@pytest.fixture(scope="module")
def shapes():
    ensure_synthetic_dataset(os.path.join(get_datasets_root(), "shapes"))


@pytest.mark.parametrize(
    "config", ["maskformer2_R18_semantic.yaml", "maskformer2_R18_panoptic.yaml"]
)
def test_the_train_loader_repeats_images_of_semantic_and_panoptic_data(shapes, config, caplog):
    cfg = load_config(
        os.path.join(REPO, "configs", "shapes", config),
        [*TINY_TRAINING, "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler"]
        + ["DATALOADER.REPEAT_THRESHOLD", "1.0"],
    )
    mapper = build_dataset_mapper(cfg, is_train=True)
    with caplog.at_level(logging.INFO, logger=repeat_factors.__name__):
        loader = bad_samples.build_train_loader(cfg, mapper)
    # with threshold 1, every image with a category in fewer than all images is repeated
    messages = " ".join(record.getMessage() for record in caplog.records)
    repeated, total = map(int, re.search(r"(\d+) of (\d+) images repeated", messages).groups())
    assert total == 200 and 0 < repeated <= total
    batch = next(iter(loader))
    assert len(batch) == 2 and all(len(sample["instances"]) > 0 for sample in batch)
