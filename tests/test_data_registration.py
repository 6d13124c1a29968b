"""Data set registration: names, metadata, loading, missing files, own-data registration."""

import json
import os
import pickle
import textwrap

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES
from helpers import run_python
from PIL import Image

import mask2former.data  # noqa: F401  registers the data sets
from mask2former.data.datasets import (
    DatasetFilesMissingError,
    panoptic_category_metadata,
    register_coco_instances_with_checks,
    register_coco_panoptic_with_checks,
    register_sem_seg_folder,
)
from mask2former.data.datasets.catalog_utils import set_file_category_metadata
from mask2former.data.preparation.ade20k import (
    convert_ade20k_instance,
    convert_ade20k_panoptic,
    convert_ade20k_sem_seg,
)
from mask2former.data.preparation.ade20k_full import convert_ade20k_full
from mask2former.data.synthetic import (
    SHAPES_CATEGORIES,
    SyntheticConfig,
    ensure_synthetic_dataset,
    synthetic_split_paths,
)

OFFICIAL_NAMES = [
    "ade20k_full_sem_seg_train",
    "ade20k_full_sem_seg_val",
    "ade20k_panoptic_train",
    "ade20k_panoptic_val",
    "ade20k_instance_train",
    "ade20k_instance_val",
    "coco_2017_train_panoptic_with_sem_seg",
    "coco_2017_val_panoptic_with_sem_seg",
    "coco_2017_train_stuff_10k_sem_seg",
    "coco_2017_test_stuff_10k_sem_seg",
    "mapillary_vistas_sem_seg_train",
    "mapillary_vistas_sem_seg_val",
    "mapillary_vistas_panoptic_train",
    "mapillary_vistas_panoptic_val",
]
SHAPES_NAMES = [
    f"shapes_{split}{suffix}"
    for split in ("train", "val")
    for suffix in ("", "_panoptic", "_sem_seg")
]
PREPARE_SCRIPTS = {
    "ade20k_full_sem_seg_train": "prepare_ade20k_full_sem_seg.py",
    "ade20k_panoptic_train": "prepare_ade20k_pan_seg.py",
    "ade20k_instance_val": "prepare_ade20k_ins_seg.py",
    "coco_2017_val_panoptic_with_sem_seg": "prepare_coco_semantic_annos_from_panoptic_annos.py",
    "coco_2017_test_stuff_10k_sem_seg": "prepare_coco_stuff_10k_sem_seg.py",
}


def _run_with_datasets_root(root, code):
    """Run ``code`` in a fresh interpreter with DETECTRON2_DATASETS=root; return its JSON."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(root))
    script = "import json, mask2former.data\n" + textwrap.dedent(code)
    return json.loads(run_python(script, env=env).stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    """A DETECTRON2_DATASETS folder with the synthetic set and a tiny prepared ADE20K."""
    root = tmp_path_factory.mktemp("datasets")
    ensure_synthetic_dataset(str(root / "shapes"), SyntheticConfig(num_train=4, num_val=2, size=64))
    ade = _fake_ade20k(root)
    convert_ade20k_sem_seg(str(ade), show_progress=False)
    convert_ade20k_panoptic(str(ade), show_progress=False)
    convert_ade20k_instance(str(ade), show_progress=False)
    return root


@pytest.fixture(scope="module")
def loaded(shapes_root):
    """What DatasetCatalog / MetadataCatalog give in a process rooted at ``shapes_root``."""
    return _run_with_datasets_root(
        shapes_root,
        """
        from detectron2.data import DatasetCatalog, MetadataCatalog
        out = {}
        for name in ["shapes_train", "shapes_val_panoptic", "shapes_val_sem_seg"]:
            dicts = DatasetCatalog.get(name)
            out[name] = [len(dicts), sorted(dicts[0])]
        pan = DatasetCatalog.get("ade20k_panoptic_val")
        inst = DatasetCatalog.get("ade20k_instance_train")
        meta = MetadataCatalog.get("ade20k_panoptic_val")
        out["ade_pan"] = [
            [(s["category_id"], s["isthing"], s["area"]) for s in d["segments_info"]] for d in pan
        ]
        out["ade_inst"] = [[a["category_id"] for a in d["annotations"]] for d in inst]
        out["ade_thing_classes"] = meta.thing_classes
        out["ade_num_stuff"] = len(meta.stuff_classes)
        out["ade_inst_classes"] = MetadataCatalog.get("ade20k_instance_train").thing_classes
        print(json.dumps(out))
        """,
    )


def test_names_registered():
    for name in OFFICIAL_NAMES + SHAPES_NAMES:
        assert name in DatasetCatalog.list(), name
    # detectron2's own names are still there
    for name in ("coco_2017_train_panoptic", "ade20k_sem_seg_val", "cityscapes_fine_sem_seg_val"):
        assert name in DatasetCatalog.list()


def test_builtin_category_tables():
    coco = MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert len(coco.stuff_classes) == 133 and len(coco.thing_classes) == 80
    assert coco.thing_dataset_id_to_contiguous_id[1] == 0  # person
    # the stuff map covers every category (sem-seg evaluation), the thing map the things
    assert sorted(coco.stuff_dataset_id_to_contiguous_id.values()) == list(range(133))
    for dataset_id, contiguous in coco.thing_dataset_id_to_contiguous_id.items():
        assert coco.stuff_dataset_id_to_contiguous_id[dataset_id] == contiguous
    stuff10k = MetadataCatalog.get("coco_2017_train_stuff_10k_sem_seg")
    assert len(stuff10k.stuff_classes) == len(set(stuff10k.stuff_classes)) == 171
    assert stuff10k.stuff_classes[0] == "person" and stuff10k.stuff_classes[-1] == "wood"
    assert stuff10k.ignore_label == 255


def test_shapes_metadata_conventions():
    pan = MetadataCatalog.get("shapes_train_panoptic")
    assert pan.evaluator_type == "coco_panoptic_seg"
    assert pan.stuff_classes == [c["name"] for c in SHAPES_CATEGORIES]
    assert pan.thing_classes == ["circle", "triangle", "square", "cross"]
    assert pan.stuff_dataset_id_to_contiguous_id == {i: i - 1 for i in range(1, 8)}
    inst = MetadataCatalog.get("shapes_val")
    assert inst.evaluator_type == "coco" and inst.thing_dataset_id_to_contiguous_id[4] == 3
    sem = MetadataCatalog.get("shapes_val_sem_seg")
    assert sem.evaluator_type == "sem_seg" and sem.ignore_label == 255
    assert len(sem.stuff_classes) == 7


def test_loading_shapes(loaded):
    counts = loaded
    assert counts["shapes_train"][0] == 4
    assert "annotations" in counts["shapes_train"][1]
    assert counts["shapes_val_panoptic"][0] == 2
    assert {"pan_seg_file_name", "sem_seg_file_name", "segments_info"} <= set(
        counts["shapes_val_panoptic"][1]
    )
    assert counts["shapes_val_sem_seg"] == [2, ["file_name", "sem_seg_file_name"]]


def test_missing_folder_messages(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    messages = _run_with_datasets_root(
        empty,
        f"""
        from detectron2.data import DatasetCatalog
        from mask2former.data.datasets import DatasetFilesMissingError
        out = {{}}
        for name in {list(PREPARE_SCRIPTS)!r}:
            try:
                DatasetCatalog.get(name)
            except DatasetFilesMissingError as e:
                out[name] = str(e)
        print(json.dumps(out))
        """,
    )
    for name, script in PREPARE_SCRIPTS.items():
        assert str(empty) in messages[name], messages[name]
        assert script in messages[name], messages[name]


def test_lazy_category_metadata(tmp_path):
    calls = []

    def loader():
        calls.append(1)
        path = tmp_path / "categories.json"
        if not path.exists():
            raise DatasetFilesMissingError(f"{path} missing")
        return panoptic_category_metadata(json.loads(path.read_text()))

    meta = set_file_category_metadata("test_lazy_categories", loader, evaluator_type="sem_seg")
    assert meta.evaluator_type == "sem_seg" and not calls  # registering reads nothing
    with pytest.raises(DatasetFilesMissingError):
        _ = meta.stuff_classes
    (tmp_path / "categories.json").write_text(
        json.dumps([{"id": 3, "name": "a", "isthing": 1}, {"id": 9, "name": "b", "isthing": 0}])
    )
    assert MetadataCatalog.get("test_lazy_categories").stuff_classes == ["a", "b"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0}
    assert meta.stuff_dataset_id_to_contiguous_id == {3: 0, 9: 1}


def test_register_own_data_in_each_format(shapes_root):
    root = str(shapes_root / "shapes")
    paths = synthetic_split_paths(root, "val")
    register_coco_instances_with_checks(
        "test_own_instances", {}, paths["instances_json"], paths["image_root"]
    )
    dicts = DatasetCatalog.get("test_own_instances")
    assert len(dicts) == 2
    assert MetadataCatalog.get("test_own_instances").thing_classes[0] == "circle"

    register_coco_panoptic_with_checks(
        "test_own_panoptic",
        panoptic_category_metadata(SHAPES_CATEGORIES),
        paths["image_root"],
        paths["panoptic_root"],
        paths["panoptic_json"],
        paths["sem_seg_root"],
        paths["instances_json"],
    )
    dicts = DatasetCatalog.get("test_own_panoptic")
    assert all(
        os.path.isfile(d["file_name"]) and os.path.isfile(d["pan_seg_file_name"]) for d in dicts
    )
    stuff = [s for d in dicts for s in d["segments_info"] if not s["isthing"]]
    assert stuff and all(4 <= s["category_id"] <= 6 for s in stuff)

    register_sem_seg_folder(
        "test_own_sem_seg", paths["image_root"], paths["sem_seg_root"], ["a"] * 7, 255
    )
    assert len(DatasetCatalog.get("test_own_sem_seg")) == 2


def test_register_own_data_explains_missing_metadata(tmp_path):
    with pytest.raises(ValueError, match="stuff_classes"):
        register_sem_seg_folder("test_bad_1", str(tmp_path), str(tmp_path), None, 255)
    with pytest.raises(ValueError, match="ignore_label"):
        register_sem_seg_folder("test_bad_2", str(tmp_path), str(tmp_path), ["a", "b"])
    with pytest.raises(ValueError, match="ignore_label 1"):
        register_sem_seg_folder("test_bad_3", str(tmp_path), str(tmp_path), ["a", "b"], 1)
    with pytest.raises(ValueError, match="stuff_dataset_id_to_contiguous_id"):
        register_coco_panoptic_with_checks(
            "test_bad_4", {"thing_classes": ["a"], "stuff_classes": ["a"]}, "i", "p", "p.json"
        )
    with pytest.raises(ValueError, match="thing_dataset_id_to_contiguous_id"):
        register_coco_instances_with_checks("test_bad_5", {"thing_classes": ["a"]}, "x.json", "i")
    register_sem_seg_folder(
        "test_missing_files", str(tmp_path / "nope"), str(tmp_path / "gt"), ["a"], 255
    )
    with pytest.raises(DatasetFilesMissingError, match="nope"):
        DatasetCatalog.get("test_missing_files")


def _fake_ade20k(root):
    """Two tiny ADE20K images per split, with semantic and instance annotations."""
    ade = root / "ADEChallengeData2016"
    # instance categories 1, 2 map to scene-parsing classes 13 (person) and 21 (car)
    (ade).mkdir(parents=True)
    (ade / "categoryMapping.txt").write_text("Instance SceneParsing Full\n1 13 100\n2 21 200\n")
    for dirname in ("training", "validation"):
        for sub in ("images", "annotations", "annotations_instance"):
            (ade / sub / dirname).mkdir(parents=True)
        for k in range(2):
            stem = f"ADE_{dirname}_{k:08d}"
            Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(
                ade / "images" / dirname / f"{stem}.jpg"
            )
            semantic = np.full((20, 30), 1, np.uint8)  # wall (stuff)
            semantic[10:, :] = 4  # floor (stuff)
            semantic[2:8, 2:8] = 13  # person (thing)
            semantic[12:18, 20:28] = 21  # car (thing)
            semantic[0, :] = 0  # unlabeled
            Image.fromarray(semantic).save(ade / "annotations" / dirname / f"{stem}.png")
            instance = np.zeros((20, 30, 3), np.uint8)
            instance[2:8, 2:8] = (1, 1, 0)
            instance[12:18, 20:28] = (2, 2, 0)
            Image.fromarray(instance).save(ade / "annotations_instance" / dirname / f"{stem}.png")
    return ade


def test_ade20k_preparation_and_loading(shapes_root, loaded):
    ade = shapes_root / "ADEChallengeData2016"
    labels = np.asarray(
        Image.open(ade / "annotations_detectron2" / "validation" / "ADE_validation_00000000.png")
    )
    assert labels[0, 0] == 255 and labels[5, 5] == 12 and labels[15, 0] == 3

    categories = json.loads((ade / "ade20k_panoptic_categories.json").read_text())
    assert [c["name"] for c in categories] == ADE20K_SEM_SEG_CATEGORIES
    assert [c["id"] for c in categories if c["isthing"]] == [12, 20]

    assert loaded["ade_thing_classes"] == ["person", "car"] and loaded["ade_num_stuff"] == 150
    assert loaded["ade_inst_classes"] == ["person", "car"]
    assert loaded["ade_inst"] == [[0, 1], [0, 1]]
    segments = sorted(loaded["ade_pan"][0])
    # wall 0 (rows 1-9 minus the person), floor 3 (rows 10-19 minus the car), person, car
    expected = [[0, False, 30 * 9 - 36], [3, False, 30 * 10 - 48], [12, True, 36], [20, True, 48]]
    assert segments == expected


def _seg_png(classes):
    """Encode class indices the way ADE20K's *_seg.png does (R / 10 * 256 + G)."""
    png = np.zeros((*classes.shape, 3), np.uint8)
    png[..., 0] = (classes // 256) * 10
    png[..., 1] = classes % 256
    return png


def test_ade20k_full_conversion_keeps_classes_present_in_both_splits(tmp_path):
    root = tmp_path / "ADE20K_2021_17_01"
    names = [f"object{i}" for i in range(1, 301)]  # class index i is names[i - 1]
    layouts = {  # class indices drawn in each split
        "training": [5, 260, 7],
        "validation": [260, 5, 9],
    }
    folders, filenames = [], []
    for split, classes in layouts.items():
        folder = f"ADE20K_2021_17_01/images/ADE/{split}/scene"
        (tmp_path / folder).mkdir(parents=True)
        labels = np.zeros((4, 6), np.int64)
        labels[0, :] = classes[0]
        labels[1, :] = classes[1]
        labels[2, :] = classes[2]  # row 3 stays unlabeled (0)
        name = f"ADE_{split}_00000001.jpg"
        Image.fromarray(np.full((4, 6, 3), 50, np.uint8)).save(tmp_path / folder / name)
        Image.fromarray(_seg_png(labels)).save(tmp_path / folder / name.replace(".jpg", "_seg.png"))
        folders.append(folder)
        filenames.append(name)
    with open(root / "index_ade20k.pkl", "wb") as f:
        pickle.dump({"folder": folders, "filename": filenames, "objectnames": names}, f)

    assert convert_ade20k_full(str(root), show_progress=False) == 2
    categories = json.loads((root / "ade20k_full_categories.json").read_text())
    assert categories == [{"id": 5, "name": "object5"}, {"id": 260, "name": "object260"}]
    labels = np.asarray(
        Image.open(root / "annotations_detectron2" / "validation" / "ADE_validation_00000001.tif")
    )
    assert labels.dtype == np.uint16
    assert labels[:, 0].tolist() == [1, 0, 65535, 65535]
    assert (root / "images_detectron2" / "training" / "ADE_training_00000001.jpg").is_file()
