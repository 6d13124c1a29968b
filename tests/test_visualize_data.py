"""tools/visualize_data.py and the drawing functions behind it
(mask2former/utils/visualization.py: draw_annotations, draw_training_sample)."""

import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.structures import BitMasks, Instances
from helpers import load_script
from PIL import Image

from mask2former.data.datasets.catalog_utils import get_datasets_root
from mask2former.data.synthetic import ensure_synthetic_dataset
from mask2former.utils.visualization import (
    annotation_tasks,
    draw_annotations,
    draw_training_sample,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PANOPTIC_CONFIG = os.path.join(REPO, "configs/shapes/maskformer2_R18_panoptic.yaml")
SEMANTIC_CONFIG = os.path.join(REPO, "configs/shapes/maskformer2_R18_semantic.yaml")


@pytest.fixture(scope="module")
def shapes():
    ensure_synthetic_dataset(os.path.join(get_datasets_root(), "shapes"))


@pytest.fixture
def tool():
    return load_script("tools/visualize_data.py")


def pictures(folder):
    names = sorted(os.listdir(folder))
    return names, [np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")) for n in names]


def test_annotation_pictures_show_the_ground_truth(shapes, tool, tmp_path):
    out = tmp_path / "vis"
    argv = ["--config-file", PANOPTIC_CONFIG, "--source", "annotation", "--num-images", "3"]
    assert tool.main([*argv, "--output-dir", str(out)]) == 0
    names, drawn = pictures(out / "shapes_train_panoptic")
    records = DatasetCatalog.get("shapes_train_panoptic")[:3]
    assert names == [
        f"{i:05d}_{os.path.splitext(os.path.basename(r['file_name']))[0]}.jpg"
        for i, r in enumerate(records)
    ]
    for picture, record in zip(drawn, records):
        image = np.asarray(Image.open(record["file_name"]).convert("RGB"))
        assert picture.shape == image.shape
        assert np.abs(picture.astype(int) - image).mean() > 10  # segments drawn over it
    # one task only: the semantic map alone differs from the panoptic picture
    assert tool.main([*argv, "--task", "semantic", "--output-dir", str(tmp_path / "sem")]) == 0
    _, semantic = pictures(tmp_path / "sem" / "shapes_train_panoptic")
    assert not np.array_equal(semantic[0], drawn[0])


def test_dataloader_pictures_are_the_augmented_crops(shapes, tool, tmp_path):
    argv = ["--config-file", PANOPTIC_CONFIG, "--source", "dataloader", "--num-images", "2"]
    runs = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert tool.main([*argv, "--seed", seed, "--output-dir", str(tmp_path / name)]) == 0
        runs[name] = pictures(tmp_path / name / "shapes_train_panoptic")[1]
    # the config's crop, padded to 128 x 128 (INPUT.SIZE_DIVISIBILITY)
    assert all(p.shape == (128, 128, 3) for p in runs["a"])
    assert all(np.array_equal(a, b) for a, b in zip(runs["a"], runs["b"]))  # same seed
    assert not all(np.array_equal(a, c) for a, c in zip(runs["a"], runs["c"]))


def test_training_sample_drawing():
    """Targets tinted in their class colour, ignored pixels whitened, padding blackened."""
    image = torch.full((3, 120, 180), 100, dtype=torch.uint8)
    masks = torch.zeros(1, 120, 180, dtype=torch.bool)
    masks[0, 15:75, 15:75] = True
    instances = Instances((120, 180), gt_classes=torch.tensor([1]), gt_masks=BitMasks(masks))
    sem_seg = torch.zeros(120, 180, dtype=torch.long)
    sem_seg[90:, :120] = 255
    padding = torch.zeros(120, 180, dtype=torch.bool)
    padding[:, 144:] = True
    sem_seg[padding] = 255
    metadata = Metadata(
        thing_classes=["a", "b"], stuff_classes=["a", "b"], thing_colors=[(0, 0, 255), (255, 0, 0)]
    )
    sample = {"image": image, "instances": instances, "sem_seg": sem_seg, "padding_mask": padding}
    picture = draw_training_sample(sample, metadata, "RGB", 255).astype(int)
    assert picture.shape == (120, 180, 3)
    # away from the labels, which are drawn at the middle of each region
    target = picture[20:30, 20:30].reshape(-1, 3).mean(0)
    assert target[0] > target[2] + 40  # class 1 is red
    assert picture[110:118, 2:10].mean() > 150  # ignored: whitened from 100
    assert picture[:, 150:].mean() < 50  # padding: dark, not marked as ignored
    assert abs(picture[5:10, 120:140].mean() - 100) < 3  # elsewhere unchanged
    # BGR input shows the same picture
    bgr = dict(sample, image=image.flip(0))
    np.testing.assert_array_equal(draw_training_sample(bgr, metadata, "BGR", 255), picture)


def test_annotation_tasks_of_a_record():
    panoptic = {"pan_seg_file_name": "p.png", "segments_info": [], "sem_seg_file_name": "s.png"}
    assert annotation_tasks(panoptic) == ["panoptic", "semantic"]
    assert annotation_tasks({"annotations": []}) == ["instance"]
    with pytest.raises(
        ValueError,
        match=r"x.jpg: no instance ground truth \(annotations\); it has: panoptic, semantic",
    ):
        draw_annotations(
            np.zeros((4, 4, 3), np.uint8),
            {**panoptic, "file_name": "x.jpg"},
            "instance",
            Metadata(),
        )


@pytest.fixture
def with_a_missing_image(shapes, tmp_path):
    name = f"test_visualize_{tmp_path.name}"
    records = [dict(r) for r in DatasetCatalog.get("shapes_train_panoptic")[:3]]
    records[1]["file_name"] = str(tmp_path / "gone.jpg")
    DatasetCatalog.register(name, lambda: records)
    source = MetadataCatalog.get("shapes_train_panoptic")
    MetadataCatalog.get(name).set(**{k: v for k, v in source.as_dict().items() if k != "name"})
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize("source", ["annotation", "dataloader"])
def test_bad_images_are_skipped_and_reported(with_a_missing_image, tool, tmp_path, caplog, source):
    argv = ["--config-file", PANOPTIC_CONFIG, "--source", source, "--dataset", with_a_missing_image]
    assert tool.main([*argv, "--output-dir", str(tmp_path / "out")]) == 0
    names, _ = pictures(tmp_path / "out" / with_a_missing_image)
    assert [n[:5] for n in names] == ["00000", "00002"]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "gone.jpg" in skipped[0]


def test_usage_errors(shapes, tool, tmp_path, capsys):
    def error(*argv):
        assert tool.main(["--output-dir", str(tmp_path), *argv]) == 2
        message = capsys.readouterr().err
        assert message.startswith("error: ")
        return message

    base = ["--config-file", SEMANTIC_CONFIG, "--source", "annotation"]
    assert "is not registered. Did you mean" in error(*base, "--dataset", "shapes_trian_sem_seg")
    assert "no instance ground truth" in error(*base, "--task", "instance")
    assert "--num-images must be at least 1" in error(*base, "--num-images", "0")
    assert "does not exist" in error("--config-file", "nowhere.yaml", "--source", "annotation")
    assert "SOLVER.BASE_LRR" in error(*base, "--opts", "SOLVER.BASE_LRR", "0.1")
