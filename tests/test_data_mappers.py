"""Dataset mappers: annotation formats, empty images, crops, ignore label, LSJ, registry, and
the target helpers (polygons rasterised after the transforms, the padding region, labels)."""

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import polygons_to_bitmask
from helpers import uncompressed_rle
from panopticapi.utils import id2rgb
from PIL import Image

from mask2former.config import add_maskformer2_config
from mask2former.data import MASK_FORMER_MAPPER_REGISTRY, build_dataset_mapper
from mask2former.data.dataset_mappers import (
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from mask2former.data.dataset_mappers.base import valid_region
from mask2former.data.dataset_mappers.target_utils import (
    rasterize_polygons,
    semantic_to_instances,
    transform_segmentations,
)

H, W = 48, 64
# INPUT.DATASET_MAPPER_NAME of the official configs -> registered class
MAPPER_NAMES = {
    "mask_former_semantic": "MaskFormerSemanticDatasetMapper",
    "mask_former_panoptic": "MaskFormerPanopticDatasetMapper",
    "mask_former_instance": "MaskFormerInstanceDatasetMapper",
    "coco_instance_lsj": "COCOInstanceLSJDatasetMapper",
    "coco_panoptic_lsj": "COCOPanopticLSJDatasetMapper",
}


def _cfg(name="mask_former_instance"):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = name
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MIN_SIZE_TEST = H
    cfg.INPUT.MAX_SIZE_TEST = 1000
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    return cfg


def _mapper(cls, augmentations=(), size_divisibility=-1, ignore_label=255):
    return cls(
        is_train=True,
        augmentations=list(augmentations),
        image_format="RGB",
        ignore_label=ignore_label,
        size_divisibility=size_divisibility,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An image, a semantic PNG and a panoptic PNG of size (H, W)."""
    root = tmp_path_factory.mktemp("mapper_data")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "img.png")

    semantic = np.zeros((H, W), dtype=np.uint8)
    semantic[:, W // 2 :] = 3
    semantic[:10, :] = 255  # unlabeled band
    Image.fromarray(semantic).save(root / "sem.png")

    pan = np.zeros((H, W), dtype=np.int64)
    pan[20:40, 5:25] = 11  # thing, category 1
    pan[30:45, 40:60] = 12  # crowd thing, category 1
    pan[:15, :] = 13  # stuff, category 4
    # pixels left 0 are void
    Image.fromarray(id2rgb(pan)).save(root / "pan.png")
    segments = [
        {"id": 11, "category_id": 1, "iscrowd": 0, "isthing": True},
        {"id": 12, "category_id": 1, "iscrowd": 1, "isthing": True},
        {"id": 13, "category_id": 4, "iscrowd": 0, "isthing": False},
    ]
    return {"root": root, "semantic": semantic, "pan": pan, "segments": segments}


def _box_mask(y0, y1, x0, x1):
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _instance_dict(files, annotations):
    return {
        "file_name": str(files["root"] / "img.png"),
        "height": H,
        "width": W,
        "image_id": 0,
        "annotations": annotations,
    }


def _all_formats():
    """One annotation per format with the mask each should produce."""
    poly_mask = _box_mask(5, 15, 5, 25)
    polygon = [[5.0, 5.0, 25.0, 5.0, 25.0, 15.0, 5.0, 15.0]]
    rle_mask = _box_mask(20, 30, 30, 50)
    rle = mask_util.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode("ascii")
    raw_mask = _box_mask(35, 45, 2, 12)
    raw_rle = uncompressed_rle(raw_mask)
    bit_mask = _box_mask(40, 47, 50, 60)
    annotations = [
        {"category_id": 0, "segmentation": polygon, "iscrowd": 0},
        {"category_id": 1, "segmentation": rle, "iscrowd": 0},
        {"category_id": 2, "segmentation": raw_rle, "iscrowd": 0},
        {"category_id": 3, "segmentation": bit_mask, "iscrowd": 0},
    ]
    return annotations, [poly_mask, rle_mask, raw_mask, bit_mask]


def test_registry_has_all_mappers_and_names_unknown_ones():
    for class_name in MAPPER_NAMES.values():
        assert class_name in MASK_FORMER_MAPPER_REGISTRY
    cfg = _cfg("no_such_mapper")
    with pytest.raises(KeyError) as err:
        build_dataset_mapper(cfg, True)
    assert "no_such_mapper" in str(err.value) and "mask_former_semantic" in str(err.value)


@pytest.mark.parametrize("name", sorted(MAPPER_NAMES))
def test_build_from_config_by_official_or_class_name(name):
    expected = MASK_FORMER_MAPPER_REGISTRY.get(MAPPER_NAMES[name])
    assert type(build_dataset_mapper(_cfg(name), True)) is expected
    assert type(build_dataset_mapper(_cfg(MAPPER_NAMES[name]), True)) is expected


def test_a_user_mapper_registered_the_detectron2_way_is_built_by_its_class_name(monkeypatch):
    class MyDatasetMapper(MaskFormerSemanticDatasetMapper):
        pass

    monkeypatch.setattr(MASK_FORMER_MAPPER_REGISTRY, "_obj_map", dict(MASK_FORMER_MAPPER_REGISTRY))
    MASK_FORMER_MAPPER_REGISTRY.register(MyDatasetMapper)
    assert type(build_dataset_mapper(_cfg("MyDatasetMapper"), True)) is MyDatasetMapper
    # it does not take over the name of the class it derives from
    semantic = build_dataset_mapper(_cfg("mask_former_semantic"), True)
    assert type(semantic) is MaskFormerSemanticDatasetMapper


def test_instance_mapper_polygon_rle_bitmask(files):
    annotations, expected = _all_formats()
    crowd = {"category_id": 5, "segmentation": _all_formats()[0][0]["segmentation"], "iscrowd": 1}
    out = build_dataset_mapper(_cfg(), True)(_instance_dict(files, annotations + [crowd]))
    assert out["image"].shape == (3, H, W) and out["image"].dtype == torch.uint8
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [0, 1, 2, 3]
    masks = instances.gt_masks.tensor
    assert masks.shape == (4, H, W) and masks.dtype == torch.bool
    for got, want in zip(masks[1:], expected[1:]):
        assert torch.equal(got, torch.from_numpy(want.astype(bool)))
    # polygons are rasterised at pixel centres: compare areas loosely
    inter = (masks[0] & torch.from_numpy(expected[0].astype(bool))).sum()
    assert inter >= 0.8 * expected[0].sum()


def test_instance_mapper_empty_image(files):
    out = build_dataset_mapper(_cfg(), True)(_instance_dict(files, []))
    instances = out["instances"]
    assert instances.image_size == (H, W)
    assert instances.gt_classes.shape == (0,)
    assert instances.gt_masks.tensor.shape == (0, H, W)


def test_instance_mapper_drops_masks_emptied_by_crop(files):
    annotations, _ = _all_formats()
    crop = T.CropTransform(
        30, 0, W - 30, H
    )  # keeps x >= 30: the polygon and bitmask at x < 25 vanish
    mapper = _mapper(MaskFormerInstanceDatasetMapper, [crop])
    out = mapper(_instance_dict(files, annotations))
    assert out["image"].shape == (3, H, W - 30)
    assert out["instances"].gt_classes.tolist() == [1, 3]
    assert out["instances"].gt_masks.tensor.flatten(1).any(dim=1).all()


def test_instance_mapper_pads_to_size_divisibility(files):
    annotations, expected = _all_formats()
    mapper = _mapper(MaskFormerInstanceDatasetMapper, size_divisibility=32)
    out = mapper(_instance_dict(files, annotations))
    assert out["image"].shape == (3, 64, 64)
    assert out["padding_mask"][H:, :].all() and not out["padding_mask"][:H, :W].any()
    assert not out["instances"].gt_masks.tensor[:, H:, :].any()


def _semantic_dict(files):
    return {
        "file_name": str(files["root"] / "img.png"),
        "sem_seg_file_name": str(files["root"] / "sem.png"),
        "height": H,
        "width": W,
    }


def test_semantic_mapper_respects_ignore_label(files):
    mapper = _mapper(MaskFormerSemanticDatasetMapper, size_divisibility=32)
    out = mapper(_semantic_dict(files))
    sem = out["sem_seg"]
    assert sem.shape == (64, 64) and sem.dtype == torch.int64
    assert torch.equal(sem[:H, :W], torch.from_numpy(files["semantic"]).long())
    assert (sem[H:, :] == 255).all()
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [0, 3]
    masks = instances.gt_masks.tensor
    assert not masks[:, sem == 255].any()
    assert torch.equal(masks[0], sem == 0) and torch.equal(masks[1], sem == 3)


def test_semantic_mapper_requires_semantic_file(files):
    mapper = _mapper(MaskFormerSemanticDatasetMapper)
    with pytest.raises(ValueError, match="sem_seg_file_name"):
        mapper({"file_name": str(files["root"] / "img.png")})


def test_semantic_mapper_color_aug_and_crop_from_config(files):
    cfg = _cfg("mask_former_semantic")
    cfg.INPUT.COLOR_AUG_SSD = True
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (32, 32)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.9
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    mapper = build_dataset_mapper(cfg, True)
    np.random.seed(0)
    out = mapper(_semantic_dict(files))
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.uint8
    assert set(out["instances"].gt_classes.tolist()) <= {0, 3}


def _panoptic_dict(files, with_sem=False):
    d = {
        "file_name": str(files["root"] / "img.png"),
        "pan_seg_file_name": str(files["root"] / "pan.png"),
        "segments_info": [dict(s) for s in files["segments"]],
        "height": H,
        "width": W,
    }
    if with_sem:
        d["sem_seg_file_name"] = str(files["root"] / "sem.png")
    return d


def test_panoptic_mapper_segments_crowd_and_void(files):
    out = _mapper(MaskFormerPanopticDatasetMapper)(_panoptic_dict(files))
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [1, 4]  # crowd segment skipped
    pan = torch.from_numpy(files["pan"])
    assert torch.equal(instances.gt_masks.tensor[0], pan == 11)
    assert torch.equal(instances.gt_masks.tensor[1], pan == 13)
    # semantic map derived from the panoptic one: void and crowd are ignored
    sem = out["sem_seg"]
    assert (sem[pan == 0] == 255).all() and (sem[pan == 12] == 255).all()
    assert (sem[pan == 11] == 1).all()


def test_panoptic_mapper_drops_segment_emptied_by_crop(files):
    crop = T.CropTransform(0, 0, W, 15)  # only the stuff band remains
    out = _mapper(MaskFormerPanopticDatasetMapper, [crop])(_panoptic_dict(files, with_sem=True))
    assert out["instances"].gt_classes.tolist() == [4]
    assert out["sem_seg"].shape == (15, W)


def test_panoptic_mapper_rejects_segment_ids_missing_from_segments_info(files):
    record = _panoptic_dict(files)
    record["segments_info"] = [s for s in record["segments_info"] if s["id"] != 13]
    with pytest.raises(ValueError, match=r"pan\.png holds segment ids \[13\]"):
        _mapper(MaskFormerPanopticDatasetMapper)(record)
    # ids that the crop removes do not matter; the crowd segment (12, no mask) is listed
    crop = T.CropTransform(0, 20, W, H - 20)  # the stuff band (id 13) is cropped away
    out = _mapper(MaskFormerPanopticDatasetMapper, [crop])(record)
    assert out["instances"].gt_classes.tolist() == [1]


def test_mapper_rejects_classes_outside_num_classes(files):
    mapper = MaskFormerSemanticDatasetMapper(
        is_train=True,
        augmentations=[],
        image_format="RGB",
        ignore_label=255,
        size_divisibility=-1,
        num_classes=3,
    )
    with pytest.raises(
        ValueError, match=r"img\.png: ground-truth classes \[3\] are outside 0\.\.2"
    ):
        mapper(_semantic_dict(files))  # labels 0 and 3
    mapper.num_classes = 4
    assert mapper(_semantic_dict(files))["instances"].gt_classes.tolist() == [0, 3]


@pytest.mark.parametrize("name", ["coco_instance_lsj", "coco_panoptic_lsj"])
def test_lsj_mappers_fixed_size_and_padding(files, name):
    cfg = _cfg(name)
    cfg.INPUT.IMAGE_SIZE = 96
    cfg.INPUT.MIN_SCALE = 0.5
    cfg.INPUT.MAX_SCALE = 0.5  # image scaled to fit 48x48: it is padded on the right and bottom
    mapper = build_dataset_mapper(cfg, True)
    if name == "coco_instance_lsj":
        annotations, _ = _all_formats()
        out = mapper(_instance_dict(files, annotations))
        assert len(out["instances"]) == 4
    else:
        out = mapper(_panoptic_dict(files))
        assert out["instances"].gt_classes.tolist() == [1, 4]
        assert (out["sem_seg"][out["padding_mask"]] == 255).all()
    assert out["image"].shape == (3, 96, 96)
    padding = out["padding_mask"]
    assert padding.shape == (96, 96) and padding.any() and not padding.all()
    assert not out["instances"].gt_masks.tensor[:, padding].any()


def test_lsj_mapper_empty_image(files):
    cfg = _cfg("coco_instance_lsj")
    cfg.INPUT.IMAGE_SIZE = 64
    out = build_dataset_mapper(cfg, True)(_instance_dict(files, []))
    assert out["instances"].gt_classes.shape == (0,)
    assert out["instances"].gt_masks.tensor.shape == (0, 64, 64)


def test_inference_mode_resizes_only(files):
    cfg = _cfg("mask_former_semantic")
    cfg.INPUT.MIN_SIZE_TEST = 24
    out = build_dataset_mapper(cfg, False)(_semantic_dict(files))
    assert out["image"].shape == (3, 24, 32)
    assert out["sem_seg"].shape == (24, 32)


def test_polygons_are_rasterised_where_the_transforms_put_them():
    # the box of pixels x 5..24, y 5..14 as a polygon, and the same box as an RLE
    polygon = [[5.0, 5.0, 25.0, 5.0, 25.0, 15.0, 5.0, 15.0]]
    rle = mask_util.encode(np.asfortranarray(_box_mask(5, 15, 5, 25)))
    # twice the size, then mirrored: the box covers x 78..117, y 10..29 of 96 x 128
    transforms = T.TransformList([T.ResizeTransform(H, W, 2 * H, 2 * W), T.HFlipTransform(2 * W)])
    masks = transform_segmentations([polygon, rle], transforms, (H, W), (2 * H, 2 * W))
    expected = np.zeros((2 * H, 2 * W), dtype=bool)
    expected[10:30, 78:118] = True
    assert masks.shape == (2, 2 * H, 2 * W) and masks.dtype == bool
    assert (masks[0] == expected).all() and (masks[1] == expected).all()
    # a crop keeping x >= 20 cuts the polygon off at its left edge: x 0..4 remain
    crop = T.TransformList([T.CropTransform(20, 0, 30, H)])
    [cut] = transform_segmentations([polygon], crop, (H, W), (H, 30))
    assert (cut == (_box_mask(5, 15, 0, 5)[:, :30] == 1)).all()
    assert transform_segmentations([], crop, (H, W), (H, 30)).shape == (0, H, 30)


def test_rasterize_polygons_equals_rasterising_the_whole_image():
    rng = np.random.default_rng(0)
    for _ in range(200):
        # star-shaped polygons around centres inside and outside the 70 x 90 mask
        corners = rng.integers(3, 20)
        angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
        radii = rng.uniform(1, 60, corners)
        centre = rng.uniform(-30, 120, size=2)
        points = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        polygons = [points.ravel(), (points[::-1] * 0.5 + 20).ravel()]
        mask = np.zeros((70, 90), dtype=bool)
        rasterize_polygons(polygons, mask)
        assert (mask == polygons_to_bitmask(polygons, 70, 90)).all()


VALID_REGION_TRANSFORMS = {
    "resize, flip, crop inside": [
        T.ResizeTransform(H, W, 77, 103),
        T.HFlipTransform(103),
        T.CropTransform(10, 5, 60, 40),
    ],
    "flip, resize, pad with the ignore label": [
        T.HFlipTransform(W),
        T.ResizeTransform(H, W, 30, 40),
        T.PadTransform(0, 0, 24, 18, orig_w=40, orig_h=30, pad_value=128, seg_pad_value=255),
    ],
    "crop reaching past the image": [T.CropTransform(50, 0, 40, H)],
    "rotation": [T.RotationTransform(H, W, 30)],
}


@pytest.mark.parametrize("name", sorted(VALID_REGION_TRANSFORMS))
def test_valid_region_equals_transforming_a_map_of_ones(name):
    transforms = T.TransformList(VALID_REGION_TRANSFORMS[name])
    expected = transforms.apply_segmentation(np.ones((H, W), dtype=np.uint8)) == 1
    valid = valid_region(transforms, (H, W))
    assert valid.dtype == bool and valid.shape == expected.shape
    assert (valid == expected).all()
    if name in ("flip, resize, pad with the ignore label", "rotation"):
        assert not valid.all()  # these pad
    if name == "crop reaching past the image":
        assert valid.shape == (H, W - 50)  # the crop's slice of the image


def test_panoptic_semantic_map_agrees_with_the_masks_after_a_resize(files):
    # a resize by 1.6: without a semantic file, "sem_seg" is each pixel's mask's class
    resize = T.ResizeTransform(H, W, 77, 103)
    out = _mapper(MaskFormerPanopticDatasetMapper, [resize])(_panoptic_dict(files))
    instances = out["instances"]
    expected = torch.full((77, 103), 255, dtype=torch.int64)
    for mask, category in zip(instances.gt_masks.tensor, instances.gt_classes):
        expected[mask] = category
    assert torch.equal(out["sem_seg"], expected)
    assert instances.gt_classes.tolist() == [1, 4]


def test_semantic_to_instances_with_sixteen_bit_and_negative_labels():
    sixteen_bit = torch.tensor([[0, 65535, 7], [7, 3, 65535]])
    instances = semantic_to_instances(sixteen_bit, ignore_label=65535)
    assert instances.gt_classes.tolist() == [0, 3, 7]
    for mask, category in zip(instances.gt_masks.tensor, [0, 3, 7]):
        assert torch.equal(mask, sixteen_bit == category)
    negative = torch.tensor([[-1, 5], [2**21, -1]])
    instances = semantic_to_instances(negative, ignore_label=-1)
    assert instances.gt_classes.tolist() == [5, 2**21]
    assert torch.equal(instances.gt_masks.tensor[1], negative == 2**21)


def test_instance_mapper_names_a_malformed_polygon(files):
    annotations = [{"category_id": 0, "segmentation": [[5.0, 5.0, 25.0, 5.0, 25.0]]}]
    with pytest.raises(ValueError, match=r"img\.png: a polygon of 5 coordinates"):
        build_dataset_mapper(_cfg(), True)(_instance_dict(files, annotations))
