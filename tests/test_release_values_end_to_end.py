"""What the release's config values switch on, end to end on small synthetic folders.

- The ADE20K instance configs turn the semantic and panoptic outputs on, but
  ``ade20k_instance_val`` has only instance ground truth: evaluation scores the instances and
  one log line names what was skipped.
- The Mapillary Vistas configs set ``IGNORE_VALUE`` 65, the ignore label of the Mapillary
  registration: training targets and semantic evaluation leave label 65 out, and the
  panoptic config's ``SEMANTIC_ON`` is scored on the data set's label PNGs.

The official names are re-registered by the real registration code under a temporary
``datasets`` root for the duration of a test, then restored.
"""

import contextlib
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.modeling import build_model
from helpers import NARROW_HEADS
from panopticapi.utils import id2rgb
from PIL import Image

import mask2former.data  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.data.dataset_mappers import base as mapper_base
from mask2former.data.dataset_mappers.build import build_dataset_mapper
from mask2former.data.datasets.register_ade20k_instance import register_all_ade20k_instance
from mask2former.data.datasets.register_mapillary_vistas import (
    MAPILLARY_VISTAS_NUM_CLASSES,
    register_all_mapillary_vistas,
)
from mask2former.data.synthetic import SyntheticConfig, ensure_synthetic_dataset
from mask2former.engine import MaskFormerTrainer, build_evaluator
from mask2former.engine import evaluation as evaluation_module
from mask2former.engine.evaluation import SemSegEvaluatorWithConfusion
from mask2former.engine.partial_evaluation import PartialCOCOPanopticEvaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADE20K_INSTANCE = "configs/ade20k/instance-segmentation/maskformer2_R50_bs16_160k.yaml"
MAPILLARY_SEMANTIC = "configs/mapillary-vistas/semantic-segmentation/maskformer2_R50_bs16_300k.yaml"
MAPILLARY_PANOPTIC = "configs/mapillary-vistas/panoptic-segmentation/maskformer_R50_bs16_300k.yaml"

# A small randomly initialised model on small images; the release's test flags stay.
SMALL = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.NORM", "BN",
    *NARROW_HEADS,
    "MODEL.MASK_FORMER.NHEADS", "2",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


@contextlib.contextmanager
def _registered_under(root, register, names):
    """Register the official ``names`` with ``register(root)``; restore the originals after."""
    saved = {name: (DatasetCatalog[name], MetadataCatalog[name]) for name in names}
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    try:
        register(str(root))
        yield
    finally:
        for name, (loader, metadata) in saved.items():
            DatasetCatalog[name] = loader
            MetadataCatalog[name] = metadata


def _config(path, tmp_path, *opts):
    return load_config(os.path.join(REPO, path), [*SMALL, "OUTPUT_DIR", str(tmp_path), *opts])


def _evaluation_log(caplog):
    return [r.getMessage() for r in caplog.records if r.name == evaluation_module.__name__]


# --- ADE20K instance: semantic and panoptic on, instance ground truth only ---------------


def _ade20k_instance_root(tmp_path):
    """A datasets root whose ADEChallengeData2016 holds the synthetic shapes as the ADE20K
    instance splits (images/{training,validation}/ and ade20k_instance_{train,val}.json)."""
    shapes = ensure_synthetic_dataset(
        str(tmp_path / "shapes"), SyntheticConfig(num_train=2, num_val=2, size=64)
    )
    root = tmp_path / "datasets"
    ade = root / "ADEChallengeData2016"
    for split, folder in (("train", "training"), ("val", "validation")):
        shutil.copytree(os.path.join(shapes, "images", split), ade / "images" / folder)
        shutil.copy(
            os.path.join(shapes, "annotations", f"instances_{split}.json"),
            ade / f"ade20k_instance_{split}.json",
        )
    return root


def test_ade20k_instance_config_evaluates_instances_and_says_what_it_skipped(tmp_path, caplog):
    root = _ade20k_instance_root(tmp_path)
    names = ["ade20k_instance_train", "ade20k_instance_val"]
    with _registered_under(root, register_all_ade20k_instance, names):
        num_classes = len(MetadataCatalog.get("ade20k_instance_val").thing_classes)
        cfg = _config(ADE20K_INSTANCE, tmp_path, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes)
        flags = cfg.MODEL.MASK_FORMER.TEST
        assert flags.SEMANTIC_ON and flags.INSTANCE_ON and flags.PANOPTIC_ON  # as released
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        with caplog.at_level(logging.WARNING, logger=evaluation_module.__name__):
            results = MaskFormerTrainer.test(cfg, model)
    assert "segm" in results and "sem_seg" not in results and "panoptic_seg" not in results
    (skipped,) = _evaluation_log(caplog)
    assert "'ade20k_instance_val'" in skipped
    assert "SEMANTIC_ON" in skipped and "PANOPTIC_ON" in skipped and "INSTANCE_ON" not in skipped


# --- Mapillary Vistas: ignore label 65 -----------------------------------------------------

# The synthetic images: a stuff class on the left, one thing on the top right and unlabeled
# pixels (label 65, panoptic id 0) on the bottom right. Category ids are label + 1.
HEIGHT, WIDTH = 48, 64
STUFF_LABEL, THING_LABEL = 2, 40
UNLABELED = MAPILLARY_VISTAS_NUM_CLASSES


def _mapillary_labels():
    labels = np.full((HEIGHT, WIDTH), STUFF_LABEL, dtype=np.uint8)
    labels[: HEIGHT // 2, WIDTH // 2 :] = THING_LABEL
    labels[HEIGHT // 2 :, WIDTH // 2 :] = UNLABELED
    return labels


def _write_mapillary_split(root, folder, image_ids, categories, rng):
    labels = _mapillary_labels()
    for sub in ("images", "labels", "panoptic"):
        os.makedirs(os.path.join(root, folder, sub), exist_ok=True)
    segment_ids = np.zeros(labels.shape, dtype=np.int64)
    segment_ids[labels == STUFF_LABEL] = 1
    segment_ids[labels == THING_LABEL] = 2
    segments_info = [
        {"id": 1, "category_id": STUFF_LABEL + 1, "iscrowd": 0},
        {"id": 2, "category_id": THING_LABEL + 1, "iscrowd": 0},
    ]
    for segment in segments_info:
        ys, xs = np.nonzero(segment_ids == segment["id"])
        segment["area"] = len(ys)
        segment["bbox"] = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
    images, annotations = [], []
    for image_id in image_ids:
        pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, folder, "images", f"{image_id}.jpg"))
        Image.fromarray(labels).save(os.path.join(root, folder, "labels", f"{image_id}.png"))
        Image.fromarray(id2rgb(segment_ids)).save(
            os.path.join(root, folder, "panoptic", f"{image_id}.png")
        )
        images.append(
            {"id": image_id, "file_name": f"{image_id}.jpg", "height": HEIGHT, "width": WIDTH}
        )
        annotations.append(
            {"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments_info}
        )
    with open(os.path.join(root, folder, "panoptic", "panoptic_2018.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


@pytest.fixture
def mapillary_root(tmp_path):
    """A datasets root with a two-image Mapillary Vistas v1.2 layout per split."""
    root = tmp_path / "datasets"
    vistas = root / "mapillary_vistas"
    os.makedirs(vistas)
    rng = np.random.default_rng(0)
    colors = [[int(c) for c in rng.integers(0, 256, 3)] for _ in range(UNLABELED + 1)]
    labels = [{"readable": f"class {i}", "color": colors[i]} for i in range(UNLABELED)]
    labels.append({"readable": "Unlabeled", "color": [0, 0, 0]})
    (vistas / "config.json").write_text(json.dumps({"labels": labels}))
    categories = [
        {"id": i + 1, "name": f"class {i}", "isthing": int(i >= 30), "color": colors[i]}
        for i in range(UNLABELED)
    ]
    _write_mapillary_split(str(vistas), "training", ["train_a", "train_b"], categories, rng)
    _write_mapillary_split(str(vistas), "validation", ["val_a", "val_b"], categories, rng)
    names = [
        f"mapillary_vistas_{task}_{split}"
        for task in ("sem_seg", "panoptic")
        for split in ("train", "val")
    ]
    with _registered_under(root, register_all_mapillary_vistas, names):
        yield root


def test_mapillary_semantic_training_targets_leave_out_label_65(mapillary_root, tmp_path, caplog):
    small_input = [
        "INPUT.MIN_SIZE_TRAIN", "(48,)",
        "INPUT.MAX_SIZE_TRAIN", "64",
        "INPUT.CROP.SIZE", "(40, 40)",
        "INPUT.SIZE_DIVISIBILITY", "64",
    ]  # fmt: skip
    cfg = _config(MAPILLARY_SEMANTIC, tmp_path, *small_input)
    train_set = cfg.DATASETS.TRAIN[0]
    assert cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == MetadataCatalog.get(train_set).ignore_label == 65
    with caplog.at_level(logging.WARNING, logger=mapper_base.__name__):
        mapper = build_dataset_mapper(cfg, is_train=True)
    assert not caplog.records  # the config agrees with the data set
    torch.manual_seed(0)
    np.random.seed(0)
    saw_unlabeled = False
    for record in DatasetCatalog.get(train_set) * 3:
        mapped = mapper(record)
        sem_seg, instances = mapped["sem_seg"], mapped["instances"]
        assert tuple(sem_seg.shape) == (64, 64)  # padded with the ignore label
        assert (sem_seg[mapped["padding_mask"]] == UNLABELED).all()
        assert UNLABELED not in instances.gt_classes.tolist()
        covered = instances.gt_masks.tensor.any(dim=0)
        assert torch.equal(covered, sem_seg != UNLABELED)
        for label, mask in zip(instances.gt_classes, instances.gt_masks.tensor):
            assert (sem_seg[mask] == label).all()
        saw_unlabeled |= bool(((sem_seg == UNLABELED) & ~mapped["padding_mask"]).any())
    assert saw_unlabeled


def test_mapillary_config_that_disagrees_with_the_data_set_is_logged(
    mapillary_root, tmp_path, caplog
):
    cfg = _config(MAPILLARY_SEMANTIC, tmp_path, "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "255")
    with caplog.at_level(logging.WARNING, logger=mapper_base.__name__):
        mapper = build_dataset_mapper(cfg, is_train=True)
    assert mapper.ignore_label == UNLABELED  # the data set's value wins
    (message,) = [r.getMessage() for r in caplog.records]
    assert "mapillary_vistas_sem_seg_train" in message and "255" in message and "65" in message


def test_mapillary_semantic_evaluation_ignores_label_65(mapillary_root, tmp_path):
    cfg = _config(MAPILLARY_PANOPTIC, tmp_path)
    (name,) = cfg.DATASETS.TEST
    evaluators = build_evaluator(cfg, name, str(tmp_path / "eval"))._evaluators
    (semantic,) = [e for e in evaluators if isinstance(e, SemSegEvaluator)]
    semantic.reset()
    labels = torch.as_tensor(_mapillary_labels(), dtype=torch.long)
    # right everywhere the data set labels, wrong on every unlabeled pixel
    predicted = torch.where(labels == UNLABELED, torch.zeros_like(labels), labels)
    scores = torch.nn.functional.one_hot(predicted, UNLABELED).permute(2, 0, 1).float()
    for record in DatasetCatalog.get(name):
        semantic.process([record], [{"sem_seg": scores}])
    result = semantic.evaluate()["sem_seg"]
    assert result["mIoU"] == pytest.approx(100.0) and result["pACC"] == pytest.approx(100.0)


def test_mapillary_panoptic_config_scores_panoptic_and_semantic(mapillary_root, tmp_path, caplog):
    cfg = _config(MAPILLARY_PANOPTIC, tmp_path, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", UNLABELED)
    flags = cfg.MODEL.MASK_FORMER.TEST
    assert flags.SEMANTIC_ON and flags.PANOPTIC_ON and not flags.INSTANCE_ON  # as released
    evaluators = build_evaluator(cfg, cfg.DATASETS.TEST[0])._evaluators
    assert sorted(type(e).__name__ for e in evaluators) == sorted(
        [PartialCOCOPanopticEvaluator.__name__, SemSegEvaluatorWithConfusion.__name__]
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with caplog.at_level(logging.WARNING, logger=evaluation_module.__name__):
        results = MaskFormerTrainer.test(cfg, model)
    assert "panoptic_seg" in results and "sem_seg" in results
    assert not _evaluation_log(caplog)  # nothing switched on lacks ground truth
