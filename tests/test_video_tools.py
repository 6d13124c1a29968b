"""The command-line tools with video data sets and video configs: the data set checker
(mask2former/data/check.py), tools/visualize_data.py, tools/analyze_model.py, and the tools
that take image models only (export_model, benchmark_inference, convert-d2-to-hf), on a small
shapes_video set generated into a temporary folder."""

import json
import os
import shutil

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BitMasks, Instances
from helpers import NARROW_HEADS, ROOT, load_script
from PIL import Image

from mask2former.config import load_config
from mask2former.data.check import check_dataset, exclude_entries, format_reports, main
from mask2former.data.datasets.ytvis import register_ytvis_instances
from mask2former.data.exclude import exclude_images, read_exclude_file
from mask2former.data.synthetic_video import (
    SHAPES_VIDEO_CATEGORIES,
    SyntheticVideoConfig,
    generate_synthetic_video_dataset,
    synthetic_video_split_paths,
)
from mask2former.export import ExportError, check_exportable
from mask2former.utils.visualization import draw_video_training_sample, video_track_ids

VIDEO_CONFIG = os.path.join(ROOT, "configs", "shapes", "video_maskformer2_R18.yaml")
IMAGE_CONFIG = os.path.join(ROOT, "configs", "shapes", "maskformer2_R18_instance.yaml")
YTVIS_CONFIG = os.path.join(
    ROOT, "configs", "youtubevis_2019", "video_maskformer2_R50_bs16_8ep.yaml"
)
# 4 train videos of 3 frames of 96 x 128, 1 val video
SMALL = SyntheticVideoConfig(num_train=4, num_val=1, num_frames=3)
METADATA = {
    "thing_classes": [c["name"] for c in SHAPES_VIDEO_CATEGORIES],
    "thing_colors": [c["color"] for c in SHAPES_VIDEO_CATEGORIES],
    "thing_dataset_id_to_contiguous_id": {
        c["id"]: i for i, c in enumerate(SHAPES_VIDEO_CATEGORIES)
    },
}


def _register(name, root, split="train"):
    paths = synthetic_video_split_paths(str(root), split)
    register_ytvis_instances(name, dict(METADATA), paths["json_file"], paths["image_root"])
    return paths


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A clean small shapes_video set registered as <prefix>_clean (train split)."""
    root = tmp_path_factory.mktemp("shapes_video")
    generate_synthetic_video_dataset(str(root), SMALL)
    name = f"test_video_tools_{root.name}"
    paths = _register(f"{name}_clean", root)
    yield {"root": root, "name": name, **paths}
    DatasetCatalog.remove(f"{name}_clean")
    MetadataCatalog.remove(f"{name}_clean")


def _present_frame(annotation):
    return next(t for t, s in enumerate(annotation["segmentations"]) if s is not None)


@pytest.fixture(scope="module")
def planted(videos, tmp_path_factory):
    """A copy of the clean set with one problem of each kind in videos 1-3; video 4 is clean.

    Returns the registered name and the {(kind, file)} the checker must report, the file
    being the frame (the frame folder for a video-level problem)."""
    root = tmp_path_factory.mktemp("planted_video")
    shutil.copytree(videos["root"], root, dirs_exist_ok=True)
    paths = synthetic_video_split_paths(str(root), "train")
    content = json.loads(open(paths["json_file"]).read())
    frames = {
        v["id"]: [os.path.join(paths["image_root"], f) for f in v["file_names"]]
        for v in content["videos"]
    }
    folder = {v: os.path.dirname(f[0]) for v, f in frames.items()}
    by_video = {}
    for annotation in content["annotations"]:
        by_video.setdefault(annotation["video_id"], []).append(annotation)
    expected = set()
    # video 1: a missing frame and an unreadable one
    os.remove(frames[1][0])
    open(frames[1][1], "wb").write(b"not a jpeg")
    expected |= {("image_missing", frames[1][0]), ("image_unreadable", frames[1][1])}
    # video 2: a frame of another size, an RLE of another size, an unknown category
    Image.new("RGB", (64, 48)).save(frames[2][2])
    expected.add(("image_size_mismatch", frames[2][2]))
    first, *others = by_video[2]
    t = _present_frame(first)
    first["segmentations"][t] = mask_util.encode(np.ones((10, 10, 1), np.uint8, order="F"))[0]
    first["segmentations"][t]["counts"] = first["segmentations"][t]["counts"].decode()
    expected.add(("instance_out_of_image", frames[2][t]))
    first["category_id"] = 99
    for t, segmentation in enumerate(first["segmentations"]):
        if segmentation is not None:
            expected.add(("instance_unknown_category", frames[2][t]))
    # video 3: an RLE that cannot be decoded, a degenerate polygon, segmentations of 2 frames
    annotation = by_video[3][0]
    t = _present_frame(annotation)
    annotation["segmentations"][t] = {"size": [96, 128], "counts": 12}
    expected.add(("instance_degenerate", frames[3][t]))
    polygon = [None, [[5, 5, 20, 5]], None]
    content["annotations"].append(dict(annotation, id=1000, segmentations=polygon))
    expected.add(("instance_degenerate", frames[3][1]))
    content["annotations"].append(dict(annotation, id=1001, segmentations=[None, None]))
    expected.add(("video_frame_count", folder[3]))
    open(paths["json_file"], "w").write(json.dumps(content))
    name = f"{videos['name']}_planted"
    _register(name, root)
    yield {"name": name, "expected": expected, "folders": folder}
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_checker_finds_nothing_in_a_clean_video_set(videos):
    report = check_dataset(f"{videos['name']}_clean", num_workers=0, show_progress=False)
    assert report.unit == "video" and report.num_images == SMALL.num_train
    assert report.problems == []
    text = format_reports([report])
    assert "4 videos checked, 0 with problems" in text and "| videos checked" in text


def test_checker_finds_exactly_the_planted_video_problems(planted):
    report = check_dataset(planted["name"], num_workers=2, show_progress=False)
    found = {(p.kind, p.file_name) for p in report.problems if p.kind != "dataset_unloadable"}
    assert found == planted["expected"]
    # the loader rejects the unknown category; the JSON is checked all the same
    [unloadable] = [p for p in report.problems if p.kind == "dataset_unloadable"]
    assert "category_id 99" in unloadable.detail or "segmentations" in unloadable.detail
    # every problem belongs to its video: frame folder and video id
    folders = planted["folders"]
    assert set(report.bad_images()) == {folders[1], folders[2], folders[3]}
    assert {p.image_id for p in report.problems if p.image} == {1, 2, 3}
    serial = check_dataset(planted["name"], num_workers=0, show_progress=False)
    assert serial.problems == report.problems


def test_checker_reads_video_records_without_a_json(videos, tmp_path):
    """A registration without json_file: the loaded dicts (contiguous category ids)."""
    records = [dict(r) for r in DatasetCatalog.get(f"{videos['name']}_clean")]
    records[0]["file_names"] = [str(tmp_path / "gone.jpg"), *records[0]["file_names"][1:]]
    frame = next(t for t, f in enumerate(records[1]["annotations"]) if f)
    records[1]["annotations"] = [list(f) for f in records[1]["annotations"]]
    records[1]["annotations"][frame] = [dict(records[1]["annotations"][frame][0], category_id=4)]
    name = f"test_video_tools_records_{tmp_path.name}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=METADATA["thing_classes"])
    try:
        report = check_dataset(name, num_workers=0, show_progress=False)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert report.unit == "video"
    assert {(p.kind, p.file_name, p.image_id) for p in report.problems} == {
        ("image_missing", str(tmp_path / "gone.jpg"), records[0]["video_id"]),
        ("instance_unknown_category", records[1]["file_names"][frame], records[1]["video_id"]),
    }


def test_checker_command_line_writes_the_bad_videos_for_the_exclude_file(
    planted, videos, tmp_path, caplog
):
    exclude = tmp_path / "exclude.txt"
    argv = [planted["name"], "--workers", "0", "--write-exclude", str(exclude)]
    with caplog.at_level("INFO", logger="mask2former.data.check"):
        assert main(argv) == 1
    out = caplog.text
    assert "4 videos checked, 3 with problems" in out
    assert "video annotation or length that does not match" in out
    assert read_exclude_file(str(exclude)) == {"1", "2", "3"}
    assert planted["folders"][2] in exclude.read_text()  # the comment names the folder
    # the entries leave those videos out of the (clean) training dicts
    kept, unmatched = exclude_images(
        DatasetCatalog.get(f"{videos['name']}_clean"), read_exclude_file(str(exclude))
    )
    assert [r["video_id"] for r in kept] == [4] and not unmatched
    assert exclude_entries([]) == []


# tools/visualize_data.py


@pytest.fixture(scope="module")
def visualize():
    return load_script("tools/visualize_data.py")


def _pictures(folder):
    names = sorted(os.listdir(folder))
    return names, [np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")) for n in names]


def test_visualize_annotations_of_a_video_set(videos, visualize, tmp_path):
    name = f"{videos['name']}_clean"
    argv = ["--config-file", VIDEO_CONFIG, "--source", "annotation", "--dataset", name]
    assert visualize.main([*argv, "--num-images", "2", "--output-dir", str(tmp_path)]) == 0
    records = DatasetCatalog.get(name)[:2]
    assert sorted(os.listdir(tmp_path / name)) == [
        f"{i:05d}_{os.path.basename(os.path.dirname(r['file_names'][0]))}"
        for i, r in enumerate(records)
    ]
    tints = {}
    for index, record in enumerate(records):
        folder = tmp_path / name / sorted(os.listdir(tmp_path / name))[index]
        names, drawn = _pictures(folder)
        assert names == [f"{t:03d}_{t:05d}.jpg" for t in range(SMALL.num_frames)]
        for picture, path, frame in zip(drawn, record["file_names"], record["annotations"]):
            image = np.asarray(Image.open(path).convert("RGB")).astype(int)
            assert picture.shape == image.shape
            difference = picture.astype(int) - image
            for entry in frame:
                mask = mask_util.decode(entry["segmentation"]).astype(bool)
                # drawn over, in the track's colour (the median: labels cover some pixels)
                assert (np.abs(difference[mask]).sum(1) > 30).mean() > 0.5
                tints.setdefault(entry["id"], []).append(np.median(difference[mask], 0))
    # one colour per track in every frame, another for each track of a video
    for tint in tints.values():
        assert np.abs(np.asarray(tint) - tint[0]).max() <= 20
    for record in records:
        firsts = [tints[track][0] for track in video_track_ids(record)]
        for a in range(len(firsts)):
            for b in range(a):
                assert np.abs(firsts[a] - firsts[b]).max() > 40


def test_video_track_colours_follow_the_track():
    record = {"annotations": [[{"id": 7}], [{"id": 3}, {"id": 7}], [], [{"id": 5}]]}
    assert video_track_ids(record) == [7, 3, 5]
    assert video_track_ids({"video_id": 1}) == []


def test_video_training_sample_draws_present_instances_in_one_colour_per_instance():
    frames = [torch.full((3, 40, 60), 90, dtype=torch.uint8) for _ in range(2)]
    masks = torch.zeros(2, 40, 60, dtype=torch.bool)
    masks[0, 5:20, 5:20] = True
    masks[1, 25:38, 35:55] = True
    instances = []
    for ids in ([0, 1], [0, -1]):  # instance 1 absent from the second frame
        frame_masks = masks.clone()
        frame_masks[torch.tensor(ids) == -1] = False
        instances.append(
            Instances(
                (40, 60),
                gt_classes=torch.tensor([0, 1]),
                gt_ids=torch.tensor(ids),
                gt_masks=BitMasks(frame_masks),
            )
        )
    metadata = MetadataCatalog.get("test_video_tools_display")
    metadata.set(thing_classes=["a", "b"])
    try:
        first, second = draw_video_training_sample(
            {"image": frames, "instances": instances}, metadata, "RGB"
        )
    finally:
        MetadataCatalog.remove("test_video_tools_display")
    assert first.shape == second.shape == (40, 60, 3)
    colour = first[8:12, 8:12].reshape(-1, 3).mean(0)
    assert np.abs(colour - 90).max() > 20  # drawn over
    np.testing.assert_allclose(second[8:12, 8:12].reshape(-1, 3).mean(0), colour, atol=3)
    assert np.abs(first[28:35, 38:52].astype(int) - 90).max() > 20
    assert np.abs(second[28:35, 38:52].astype(int) - 90).max() <= 2  # absent: not drawn
    # the two instances in two colours
    assert np.abs(first[28:35, 38:45].reshape(-1, 3).mean(0) - colour).max() > 20


def test_visualize_dataloader_of_a_video_set(videos, visualize, tmp_path):
    name = f"{videos['name']}_clean"
    argv = ["--config-file", VIDEO_CONFIG, "--source", "dataloader", "--dataset", name]
    argv += ["--num-images", "2", "--seed", "0"]
    runs = {}
    for run in ("a", "b"):
        output = ["--output-dir", str(tmp_path / run), "--opts", *NARROW_HEADS]
        assert visualize.main([*argv, *output]) == 0
        runs[run] = {
            video: _pictures(tmp_path / run / name / video)
            for video in sorted(os.listdir(tmp_path / run / name))
        }
    assert len(runs["a"]) == 2
    for video, (names, pictures) in runs["a"].items():
        # the sampled clip: INPUT.SAMPLING_FRAME_NUM frames, named by clip position and frame
        assert len(names) == 2 and [n[:4] for n in names] == ["000_", "001_"]
        assert len({p.shape for p in pictures}) == 1  # one size for the whole clip
        assert all(np.array_equal(p, q) for p, q in zip(pictures, runs["b"][video][1]))


def test_visualize_refuses_a_model_that_does_not_take_the_data(videos, visualize, tmp_path, capsys):
    def error(*argv):
        assert visualize.main(["--output-dir", str(tmp_path), *argv]) == 2
        message = capsys.readouterr().err
        assert message.startswith("error: ") and message.count("\n") == 1
        return message

    name = f"{videos['name']}_clean"
    message = error("--config-file", IMAGE_CONFIG, "--source", "dataloader", "--dataset", name)
    assert "holds videos" in message and "video config" in message and IMAGE_CONFIG in message
    message = error(
        "--config-file", VIDEO_CONFIG, "--source", "annotation", "--dataset", name,
        "--task", "panoptic",
    )  # fmt: skip
    assert "no panoptic ground truth" in message and "video" in message


# tools that take image models only, and analyze_model


def test_export_refuses_a_video_config_before_building(tmp_path, capsys, monkeypatch):
    export_model = load_script("tools/export_model.py")

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(export_model, "Predictor", no_model)
    output = tmp_path / "model.onnx"
    assert export_model.main(["--config-file", YTVIS_CONFIG, "--output", str(output)]) == 1
    message = capsys.readouterr().err
    assert message.startswith(f"error: {YTVIS_CONFIG} is a video model")
    assert "not exported" in message and "VideoPredictor" in message
    assert not output.exists()
    # the library function refuses too
    with pytest.raises(ExportError, match="video models are not exported"):
        check_exportable(load_config(VIDEO_CONFIG))
    check_exportable(load_config(IMAGE_CONFIG))


def test_benchmark_inference_refuses_a_video_config(capsys):
    benchmark = load_script("tools/benchmark_inference.py")
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--config-file", VIDEO_CONFIG])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "is a video model" in message and "image models only" in message


def test_convert_to_hugging_face_refuses_a_video_config(tmp_path, capsys):
    to_hf = load_script("tools/convert-d2-to-hf.py")
    config = os.path.join(ROOT, "configs", "youtubevis_2019", "swin")
    config = os.path.join(config, "video_maskformer2_swin_tiny_bs16_8ep.yaml")
    # refused before the (missing) weights are looked for
    argv = ["--config-file", config, "--weights", str(tmp_path / "none.pth"), str(tmp_path / "hf")]
    assert to_hf.main(argv) == 1
    message = capsys.readouterr().err
    assert "is a video model" in message and "not converted" in message
    assert not (tmp_path / "hf").exists()


def _analyze(argv, capsys):
    analyze_model = load_script("tools/analyze_model.py")
    status = analyze_model.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def _report(out):
    return json.loads(out[out.rindex("\n{\n") + 1 :])


def test_analyze_counts_a_video_model_per_clip(capsys):
    base = ["--config-file", VIDEO_CONFIG, "--input-size", "64", "64", "-n", "1"]
    opts = ["--opts", "MODEL.DEVICE", "cpu", *NARROW_HEADS]
    counts = {}
    for frames in ("1", "2"):
        argv = [*base, "--tasks", "flop", "activation", "parameter", "--num-frames", frames]
        status, out, err = _analyze([*argv, *opts], capsys)
        assert status == 0, err
        counts[frames] = report = _report(out)
        assert report["parameter"]["millions"] > 0
        for task in ("flop", "activation"):
            assert report[task]["images"] == 1 and report[task]["mean"] > 0
            assert {"conv", "scaled_dot_product_attention"} <= set(report[task]["by_operator"])
    # the backbone and pixel decoder run per frame: two frames count more than one
    assert counts["2"]["flop"]["by_operator"]["conv"] == pytest.approx(
        2 * counts["1"]["flop"]["by_operator"]["conv"], rel=0.01
    )
    status, _, err = _analyze(
        ["--config-file", IMAGE_CONFIG, "--input-size", "64", "64", "--num-frames", "2"], capsys
    )
    assert status == 1 and "--num-frames is for video models" in err
