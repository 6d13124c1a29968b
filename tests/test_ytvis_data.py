"""YouTube-VIS data: the JSON loader, registrations, the synthetic video set, the video mapper."""

import json
import os
import time

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from helpers import uncompressed_rle

import mask2former.data  # noqa: F401  registers the data sets
from mask2former.config import add_maskformer2_config
from mask2former.data import build_dataset_mapper
from mask2former.data.bad_samples import BadSample
from mask2former.data.dataset_mappers import YTVISDatasetMapper
from mask2former.data.dataset_mappers.target_utils import annotation_to_mask
from mask2former.data.dataset_mappers.ytvis_dataset_mapper import sample_frame_indices
from mask2former.data.datasets import DatasetFilesMissingError
from mask2former.data.datasets.catalog_utils import get_datasets_root
from mask2former.data.datasets.ytvis import (
    YTVIS_2019_CLASSES,
    YTVIS_2021_CLASSES,
    load_ytvis_json,
    register_ytvis_instances,
)
from mask2former.data.synthetic_video import (
    SyntheticVideoConfig,
    ensure_synthetic_video_dataset,
    synthetic_video_split_paths,
)

SMALL = SyntheticVideoConfig(num_train=3, num_val=2, num_frames=6, seed=1)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    return ensure_synthetic_video_dataset(str(tmp_path_factory.mktemp("video") / "v"), SMALL)


@pytest.fixture(scope="module")
def train_dicts(video_root):
    paths = synthetic_video_split_paths(video_root, "train")
    return load_ytvis_json(paths["json_file"], paths["image_root"])


def _write(path, content):
    with open(path, "w") as f:
        json.dump(content, f)
    return str(path)


def _handmade(tmp_path, with_annotations=True):
    """One 3-frame 8x10 video with two tracks and one without annotations."""
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:5, 3:7] = True
    compressed = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode()
    content = {
        "videos": [
            {"id": 7, "width": 10, "height": 8, "length": 3,
             "file_names": ["a/0.jpg", "a/1.jpg", "a/2.jpg"]},
            {"id": 8, "width": 10, "height": 8, "length": 1, "file_names": ["b/0.jpg"]},
        ],
        "categories": [{"id": 9, "name": "nine"}, {"id": 5, "name": "five"}],
    }  # fmt: skip
    if with_annotations:
        content["annotations"] = [
            {
                "id": 11,
                "video_id": 7,
                "category_id": 9,
                "iscrowd": 0,
                "segmentations": [uncompressed_rle(mask), compressed, None],
                "bboxes": [[3, 2, 4, 3], [3, 2, 4, 3], None],
                "areas": [12, 12, None],
            },
            {
                "id": 12,
                "video_id": 7,
                "category_id": 5,
                "iscrowd": 1,
                "segmentations": [[[1, 1, 4, 1, 4, 4, 1, 4]], None, [[1, 1, 4, 1, 4, 4]]],
                "bboxes": [[1, 1, 3, 3], [1, 1, 3, 3], None],
            },
        ]
    return _write(tmp_path / "ann.json", content), mask


def test_load_ytvis_json_format(tmp_path):
    json_file, mask = _handmade(tmp_path)
    dicts = load_ytvis_json(json_file, "/root")
    assert [d["video_id"] for d in dicts] == [7, 8]
    video = dicts[0]
    assert video["file_names"] == ["/root/a/0.jpg", "/root/a/1.jpg", "/root/a/2.jpg"]
    assert (video["height"], video["width"], video["length"]) == (8, 10, 3)
    assert dicts[1]["annotations"] == [[]]
    frames = video["annotations"]
    # frame 2 has a null bbox for track 12 and a null segmentation for track 11: no entries
    assert [[a["id"] for a in f] for f in frames] == [[11, 12], [11], []]
    first = frames[0][0]
    # category ids sorted: 5 -> 0, 9 -> 1
    assert first["category_id"] == 1 and frames[0][1]["category_id"] == 0
    assert first["bbox_mode"] == BoxMode.XYWH_ABS and first["bbox"] == [3, 2, 4, 3]
    assert frames[0][1]["iscrowd"] == 1
    # the uncompressed RLE became a compressed one with the same mask
    assert not isinstance(first["segmentation"]["counts"], list)
    for entry in (first, frames[1][0]):
        np.testing.assert_array_equal(annotation_to_mask(entry["segmentation"], 8, 10), mask)
    assert isinstance(frames[0][1]["segmentation"], list)  # polygons stay polygons


def test_load_without_ground_truth_and_from_metadata(tmp_path):
    json_file, _ = _handmade(tmp_path, with_annotations=False)
    dicts = load_ytvis_json(json_file, "/root")
    assert all("annotations" not in d for d in dicts)
    name = "test_ytvis_own_data"
    register_ytvis_instances(name, {}, json_file, str(tmp_path))
    assert MetadataCatalog.get(name).evaluator_type == "ytvis"
    assert len(DatasetCatalog.get(name)) == 2
    assert MetadataCatalog.get(name).thing_classes == ["five", "nine"]
    assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {5: 0, 9: 1}


def test_load_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "none.json")
    with pytest.raises(FileNotFoundError, match="none.json"):
        load_ytvis_json(missing, "/root")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_ytvis_json(str(bad), "/root")
    coco = _write(tmp_path / "coco.json", {"images": [], "annotations": []})
    with pytest.raises(ValueError, match="coco.json is not in the YouTube-VIS format"):
        load_ytvis_json(coco, "/root")
    json_file, _ = _handmade(tmp_path)
    with open(json_file) as f:
        content = json.load(f)
    content["annotations"][0]["segmentations"].append(None)
    short = _write(tmp_path / "short.json", content)
    with pytest.raises(ValueError, match=r"short.json: annotation 11 of video 7 .*length 4"):
        load_ytvis_json(short, "/root")
    with pytest.raises(DatasetFilesMissingError, match="none.json"):
        register_ytvis_instances("test_ytvis_missing", {}, missing, str(tmp_path))
        DatasetCatalog.get("test_ytvis_missing")


def test_official_registrations():
    for year, classes in (("2019", YTVIS_2019_CLASSES), ("2021", YTVIS_2021_CLASSES)):
        assert len(classes) == len(set(classes)) == 40
        for split in ("train", "val", "test"):
            metadata = MetadataCatalog.get(f"ytvis_{year}_{split}")
            assert metadata.evaluator_type == "ytvis"
            assert metadata.thing_classes == list(classes)
            assert metadata.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(40)}
            assert len({tuple(c) for c in metadata.thing_colors}) == 40
    assert MetadataCatalog.get("ytvis_2019_val").json_file.endswith("ytvis_2019/valid.json")
    assert MetadataCatalog.get("ytvis_2021_train").json_file.endswith(
        os.path.join("ytvis_2021", "train", "instances.json")
    )
    assert YTVIS_2019_CLASSES[39] == "tennis_racket" and YTVIS_2021_CLASSES[0] == "airplane"
    if os.path.exists(os.path.join(get_datasets_root(), "ytvis_2019")):
        pytest.skip("YouTube-VIS 2019 is present: no missing-file error to check")
    with pytest.raises(DatasetFilesMissingError, match=r"ytvis_2019_val.*valid.json.*CodaLab"):
        DatasetCatalog.get("ytvis_2019_val")


def test_synthetic_video_set(video_root, train_dicts, tmp_path):
    assert MetadataCatalog.get("shapes_video_val").evaluator_type == "ytvis"
    assert len(train_dicts) == SMALL.num_train
    absent_somewhere = False
    for video in train_dicts:
        assert len(video["file_names"]) == video["length"] == SMALL.num_frames
        tracks = {a["id"] for frame in video["annotations"] for a in frame}
        assert tracks
        for frame in video["annotations"]:
            absent_somewhere |= len(frame) < len(tracks)
            for ann in frame:
                mask = annotation_to_mask(ann["segmentation"], SMALL.height, SMALL.width)
                assert mask.sum() >= SMALL.min_visible_area
                assert 0 <= ann["category_id"] < 4
    assert absent_somewhere, "some object should leave or enter the frame"
    # deterministic and fast
    start = time.perf_counter()
    again = ensure_synthetic_video_dataset(str(tmp_path / "again"), SMALL)
    assert time.perf_counter() - start < 2.0
    for split in ("train", "val"):
        with open(synthetic_video_split_paths(video_root, split)["json_file"], "rb") as f1:
            with open(synthetic_video_split_paths(again, split)["json_file"], "rb") as f2:
                assert f1.read() == f2.read()
    # a complete set is not generated again
    marker = os.path.join(again, "GENERATED.json")
    mtime = os.path.getmtime(marker)
    ensure_synthetic_video_dataset(again, SMALL)
    assert os.path.getmtime(marker) == mtime


@pytest.mark.parametrize(
    "length,num,frame_range", [(10, 4, 2), (1, 3, 5), (5, 3, 0), (30, 6, 20), (3, 1, 2)]
)
def test_sample_frame_indices(length, num, frame_range):
    np.random.seed(0)
    for shuffle in (False, True):
        for _ in range(20):
            indices = sample_frame_indices(length, num, frame_range, shuffle)
            assert len(indices) == num and all(0 <= i < length for i in indices)
            if not shuffle:
                assert indices == sorted(indices)
            assert max(indices) - min(indices) <= 2 * frame_range
            if length == 1 or frame_range == 0:
                assert len(set(indices)) == 1


def _cfg(**input_keys):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = "ytvis"
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (SMALL.height,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice_by_clip"
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.MIN_SIZE_TEST = 48
    cfg.INPUT.SAMPLING_FRAME_NUM = 3
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4
    for key, value in input_keys.items():
        cfg.INPUT[key] = value
    return cfg


def _gt_track_masks(video, track_id, frame):
    for ann in video["annotations"][frame]:
        if ann["id"] == track_id:
            return annotation_to_mask(ann["segmentation"], video["height"], video["width"]) == 1
    return None


def test_train_mapper_tracks_instances(train_dicts):
    mapper = build_dataset_mapper(_cfg(SAMPLING_FRAME_NUM=4), is_train=True)
    assert isinstance(mapper, YTVISDatasetMapper)
    np.random.seed(3)
    saw_absent = False
    for _ in range(4):
        for video in train_dicts:
            out = mapper(video)
            assert len(out["image"]) == len(out["instances"]) == len(out["frame_indices"]) == 4
            assert out["file_names"] == [video["file_names"][i] for i in out["frame_indices"]]
            assert (out["height"], out["width"]) == (video["height"], video["width"])
            ids_in_clip = {a["id"] for i in out["frame_indices"] for a in video["annotations"][i]}
            for image, instances, index in zip(
                out["image"], out["instances"], out["frame_indices"]
            ):
                assert image.dtype == torch.uint8 and image.shape == (3, 96, 128)
                assert instances.gt_masks.tensor.shape[1:] == (96, 128)
                assert instances.gt_classes.dtype == torch.int64
                assert set(out["instances"][0].gt_ids.tolist()) - {-1} <= ids_in_clip
                assert len(instances) == len(ids_in_clip)
                # the same instances in the same order in every frame
                assert torch.equal(instances.gt_classes, out["instances"][0].gt_classes)
                for k, track_id in enumerate(instances.gt_ids.tolist()):
                    mask = instances.gt_masks.tensor[k].numpy()
                    if track_id == -1:
                        assert not mask.any()
                        saw_absent = True
                    else:
                        np.testing.assert_array_equal(mask, _gt_track_masks(video, track_id, index))
    assert saw_absent


def test_flip_by_clip_flips_every_frame_or_none(train_dicts):
    video = train_dicts[0]
    plain = YTVISDatasetMapper(_cfg(), is_train=True)
    by_clip = YTVISDatasetMapper(_cfg(RANDOM_FLIP="flip_by_clip"), is_train=True)
    per_frame = YTVISDatasetMapper(_cfg(RANDOM_FLIP="horizontal", SAMPLING_FRAME_NUM=6))
    np.random.seed(0)
    outcomes, per_frame_mixed = set(), False
    for seed in range(6):
        np.random.seed(seed)
        reference = plain(video)
        np.random.seed(seed)
        flipped = by_clip(video)
        # the flip draw comes after the frame sampling: the same frames
        assert flipped["frame_indices"] == reference["frame_indices"]
        states = [torch.equal(f, r.flip(-1)) for f, r in zip(flipped["image"], reference["image"])]
        same = [torch.equal(f, r) for f, r in zip(flipped["image"], reference["image"])]
        assert all(s or t for s, t in zip(states, same))
        assert all(states) or all(same)
        outcomes.add(all(states))
        masks = [i.gt_masks.tensor for i in flipped["instances"]]
        expected = [i.gt_masks.tensor for i in reference["instances"]]
        for m, e, flip in zip(masks, expected, states):
            assert torch.equal(m, e.flip(-1) if flip else e)
        np.random.seed(seed)
        out = per_frame(video)
        first = out["image"][0]
        per_frame_mixed |= len({torch.equal(f, first) for f in out["image"]}) > 1
    assert outcomes == {True, False}
    assert per_frame_mixed


def test_per_frame_resize_pads_to_one_size(train_dicts):
    cfg = _cfg(MIN_SIZE_TRAIN_SAMPLING="choice", MIN_SIZE_TRAIN=(48, 96), SAMPLING_FRAME_NUM=6)
    mapper = YTVISDatasetMapper(cfg, is_train=True)
    np.random.seed(1)
    out = mapper(train_dicts[1])
    shapes = {tuple(image.shape) for image in out["image"]}
    assert len(shapes) == 1
    assert {tuple(i.image_size) for i in out["instances"]} == {next(iter(shapes))[1:]}
    # every frame was resized to 48 or 96 pixels high: a 48-high one is padded with 128
    heights = [int((image[0, :, 0] != 128).sum()) for image in out["image"]]
    assert heights and all(h <= 96 for h in heights)


def test_extra_augmentations_and_unknown_names(train_dicts):
    cfg = _cfg(AUGMENTATIONS=["brightness", "contrast", "saturation", "rotation"])
    np.random.seed(0)
    out = YTVISDatasetMapper(cfg, is_train=True)(train_dicts[0])
    assert len(out["image"]) == 3
    with pytest.raises(ValueError, match=r"INPUT.AUGMENTATIONS.*'blur'.*brightness"):
        YTVISDatasetMapper(_cfg(AUGMENTATIONS=["blur"]), is_train=True)
    with pytest.raises(ValueError, match=r"INPUT.RANDOM_FLIP.*flip_by_clip"):
        YTVISDatasetMapper(_cfg(RANDOM_FLIP="diagonal"), is_train=True)
    with pytest.raises(ValueError, match=r"INPUT.MIN_SIZE_TRAIN_SAMPLING"):
        YTVISDatasetMapper(_cfg(MIN_SIZE_TRAIN_SAMPLING="by_clip"), is_train=True)


def test_test_mapper_takes_all_frames(train_dicts):
    video = train_dicts[0]
    out = YTVISDatasetMapper(_cfg(), is_train=False)(video)
    assert out["frame_indices"] == list(range(video["length"]))
    assert out["file_names"] == video["file_names"]
    assert "instances" not in out
    assert {tuple(image.shape) for image in out["image"]} == {(3, 48, 64)}
    assert (out["height"], out["width"]) == (96, 128)


def test_crop_and_class_check(train_dicts):
    cfg = _cfg()
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (40, 50)
    np.random.seed(0)
    out = YTVISDatasetMapper(cfg, is_train=True)(train_dicts[0])
    # cropped to 40x50, then the shortest edge resized to 96
    assert {tuple(image.shape) for image in out["image"]} == {(3, 96, 120)}
    cfg = _cfg()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 1
    video = dict(train_dicts[0])
    video["annotations"] = [[dict(a, category_id=3) for a in f] for f in video["annotations"]]
    with pytest.raises(ValueError, match=r"classes \[3\] are outside 0..0"):
        YTVISDatasetMapper(cfg, is_train=True)(video)


def test_unreadable_frame_names_the_file(train_dicts, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    video = dict(train_dicts[0], file_names=[str(broken)] * train_dicts[0]["length"])
    with pytest.raises(OSError, match="broken.jpg") as info:
        YTVISDatasetMapper(_cfg(), is_train=False)(video)
    bad = BadSample.from_error(video, info.value)
    assert bad.file_name == str(tmp_path) and bad.image_id == video["video_id"]
    assert "broken.jpg" in bad.reason


def test_empty_clip_gives_zero_instances(train_dicts):
    video = dict(train_dicts[0])
    video["annotations"] = [[] for _ in video["annotations"]]
    out = YTVISDatasetMapper(_cfg(), is_train=True)(video)
    for instances in out["instances"]:
        assert len(instances) == 0 and instances.gt_masks.tensor.shape == (0, 96, 128)
        assert instances.gt_ids.shape == (0,)


def test_rotation_is_per_clip(train_dicts):
    cfg = _cfg(AUGMENTATIONS=["rotation"], SAMPLING_FRAME_NUM=2)
    mapper = YTVISDatasetMapper(cfg, is_train=True)
    video = dict(train_dicts[0], file_names=[train_dicts[0]["file_names"][0]] * 6)
    np.random.seed(5)
    out = mapper(video)
    # both frames are the same picture: the same rotation gives the same result
    assert torch.equal(out["image"][0], out["image"][1])
    assert isinstance(mapper.augmentations[-1][0], T.RandomRotation)
