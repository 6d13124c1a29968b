"""MODEL.SEM_SEG_HEAD.NUM_CLASSES against the data sets' classes (mask2former.data.num_classes):
every shipped config agrees with its data sets, and a config copied from another data set stops
train_net.py before anything runs, instead of at the evaluation after training."""

import glob
import os
import subprocess
import sys

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers import ROOT

from mask2former.config import load_config
from mask2former.data import NumClassesError, check_num_classes
from mask2former.data.datasets.catalog_utils import DatasetFilesMissingError
from mask2former.data.num_classes import dataset_classes

CONFIGS = sorted(
    os.path.relpath(path, os.path.join(ROOT, "configs"))
    for path in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(path).startswith("Base")
)


def _config(name, *opts):
    return load_config(os.path.join(ROOT, "configs", name), ["MODEL.DEVICE", "cpu", *opts])


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_agrees_with_its_data_sets(name):
    cfg = _config(name)
    try:
        check_num_classes(cfg)  # registered metadata only: no data set is read
    except DatasetFilesMissingError as error:  # ADE20K instance, Mapillary Vistas
        pytest.skip(f"its classes are read from the data set's files: {error}")
    checked = [
        dataset
        for dataset in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)
        if dataset_classes(cfg, dataset) is not None
    ]
    assert checked, f"{name}: no data set of it lists its classes, nothing was checked"


def test_instance_and_panoptic_models_count_their_own_classes():
    # Cityscapes lists 8 thing and 19 stuff classes: an instance model predicts the things
    instance = _config("cityscapes/instance-segmentation/maskformer2_R50_bs16_90k.yaml")
    panoptic = _config("cityscapes/panoptic-segmentation/maskformer2_R50_bs16_90k.yaml")
    assert len(dataset_classes(instance, instance.DATASETS.TEST[0])) == 8
    assert len(dataset_classes(panoptic, panoptic.DATASETS.TEST[0])) == 19


@pytest.mark.parametrize("num_classes", ["3", "20"])
def test_a_model_with_other_classes_is_refused_naming_the_data_sets(num_classes):
    cfg = _config(
        "shapes/maskformer2_R18_instance.yaml", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes
    )
    with pytest.raises(NumClassesError) as error:
        check_num_classes(cfg)
    message = str(error.value)
    assert f"NUM_CLASSES is {num_classes}" in message
    assert "'shapes_train' has 4 classes" in message and "'shapes_val' has 4 classes" in message
    assert "Set MODEL.SEM_SEG_HEAD.NUM_CLASSES 4" in message


def test_classes_read_when_the_data_set_is_loaded_are_checked_with_load(tmp_path):
    # a data set registered without metadata lists its classes only once loaded
    name = "num_classes_test_lazy"
    DatasetCatalog.register(
        name, lambda: MetadataCatalog.get(name).set(thing_classes=["a", "b"]) and []
    )
    try:
        cfg = _config("shapes/maskformer2_R18_instance.yaml", "DATASETS.TEST", f"('{name}',)")
        cfg.DATASETS.TRAIN = ()
        check_num_classes(cfg)  # unknown without loading: not checked
        with pytest.raises(NumClassesError, match=f"'{name}' has 2 classes"):
            check_num_classes(cfg, load=True)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_eval_only_checks_the_test_data_sets_only():
    # an evaluation needs no training data: its classes are not checked
    name = "num_classes_test_two_classes"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])
    try:
        cfg = _config("shapes/maskformer2_R18_instance.yaml", "DATASETS.TRAIN", f"('{name}',)")
        with pytest.raises(NumClassesError, match=f"'{name}' has 2 classes"):
            check_num_classes(cfg)
        check_num_classes(cfg, cfg.DATASETS.TEST)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_train_net_stops_before_training(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file"]
    command += [os.path.join(ROOT, "configs", "shapes", "maskformer2_R18_instance.yaml")]
    command += ["MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "20"]
    command += ["OUTPUT_DIR", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode != 0
    assert "error: MODEL.SEM_SEG_HEAD.NUM_CLASSES is 20" in result.stderr
    assert not os.path.exists(tmp_path / "model_final.pth")
    assert "Starting training" not in result.stdout + result.stderr
