"""Video instance segmentation end to end: train_net's trainer on the synthetic shapes_video set
through the YouTube-VIS evaluator, the VideoPredictor, and demo/demo.py with a video model (a
video file, or frames as --input), on a narrow ResNet-18 VideoMaskFormer."""

import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from helpers import NARROW_HEADS, ROOT, TINY_TRAINING, load_script, read_video, write_clip

from mask2former import Predictor, VideoPredictor
from mask2former.config import load_config
from mask2former.engine import MaskFormerTrainer

CONFIG = os.path.join(ROOT, "configs", "shapes", "video_maskformer2_R18.yaml")
IMAGE_CONFIG = os.path.join(ROOT, "configs", "shapes", "maskformer2_R18_instance.yaml")
demo = load_script("demo/demo.py")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_train_then_evaluate_video_ap(tmp_path):
    cfg = load_config(CONFIG, [*TINY_TRAINING, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(tmp_path)])
    cfg.freeze()
    trainer = MaskFormerTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # evaluates DATASETS.TEST after the last iteration
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 3 and all(math.isfinite(v) for v, _ in losses)
    segm = trainer._last_eval_results["segm"]
    for name in ("AP", "AP50", "AP75", "AR1", "AR10"):
        assert 0 <= segm[name] <= 100, (name, segm)
    results = json.loads((tmp_path / "inference" / "results.json").read_text())
    videos = {video["video_id"]: video for video in _val_videos()}
    assert {entry["video_id"] for entry in results} == set(videos)
    for entry in results:
        assert len(entry["segmentations"]) == videos[entry["video_id"]]["length"]
        assert 1 <= entry["category_id"] <= 4  # the data set's ids, not contiguous ones


def _val_videos():
    from detectron2.data import DatasetCatalog

    return DatasetCatalog.get("shapes_video_val")


@pytest.fixture(scope="module")
def predictor():
    return VideoPredictor(CONFIG, "", opts=["MODEL.DEVICE", "cpu", *NARROW_HEADS])


def test_video_predictor_returns_tracks_at_the_frame_size(predictor):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(5)]
    prediction = predictor(frames)
    assert prediction.frame_size == (40, 60) and prediction.num_frames == 5
    assert 0 < len(prediction) <= predictor.cfg.MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO
    assert prediction.masks.shape == (len(prediction), 5, 40, 60)
    assert prediction.masks.dtype == bool
    assert np.all(np.diff(prediction.scores) <= 0)  # sorted by decreasing score
    assert set(prediction.class_names) <= {"circle", "triangle", "square", "cross"}
    assert prediction.frame(4).instances.masks.shape == (len(prediction), 40, 60)


def test_video_predictor_reads_a_video_file_up_to_max_frames(predictor, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=6, size=(48, 32))
    prediction = predictor(clip, max_frames=4)
    assert prediction.num_frames == 4 and prediction.frame_size == (32, 48)


def test_video_predictor_refuses_what_does_not_apply(predictor, tmp_path):
    with pytest.raises(ValueError, match="image model: use mask2former.Predictor"):
        VideoPredictor(IMAGE_CONFIG, "")
    with pytest.raises(ValueError, match="does not take 'tasks'"):
        VideoPredictor(CONFIG, "", tasks=["instance"])
    with pytest.raises(ValueError, match="one size"):
        predictor.predict_arrays([np.zeros((20, 30, 3), np.uint8), np.zeros((30, 20, 3), np.uint8)])
    with pytest.raises(ValueError, match="no frames"):
        predictor.predict_arrays([])


def _run_demo(argv, capsys):
    # a random model scores low: keep every track
    argv = ["--config-file", CONFIG, "--confidence-threshold", "0", *argv]
    status = demo.main([*argv, "--opts", "MODEL.DEVICE", "cpu", *NARROW_HEADS])
    captured = capsys.readouterr()
    return status, captured.err


def test_demo_on_a_video_file_writes_the_video_and_its_tracks(tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.mp4", frames=5, fps=6.0, size=(48, 32))
    status, _ = _run_demo(["--video-input", clip, "--output", str(tmp_path / "out")], capsys)
    assert status == 0
    fps, shapes = read_video(tmp_path / "out" / "clip.mp4")
    assert fps == pytest.approx(6.0) and shapes == [(32, 48, 3)] * 5
    tracks = json.loads((tmp_path / "out" / "clip.tracks.json").read_text())
    assert tracks and all(len(track["segmentations"]) == 5 for track in tracks)
    assert all(track["video_id"] == "clip.mp4" for track in tracks)


def test_demo_on_frames_writes_a_picture_per_frame_and_reports_a_bad_one(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for index in range(3):
        cv2.imwrite(str(folder / f"{index:05d}.jpg"), rng.integers(0, 256, (32, 40, 3), np.uint8))
    (folder / "00003.jpg").write_bytes(b"not a jpeg")
    status, err = _run_demo(["--input", str(folder), "--output", str(tmp_path / "out")], capsys)
    assert status == 1  # the bad frame is reported
    assert "00003.jpg" in err and "left out of the clip" in err
    written = sorted(os.listdir(tmp_path / "out"))
    assert written == ["00000.jpg", "00001.jpg", "00002.jpg", "tracks.json"]
    tracks = json.loads((tmp_path / "out" / "tracks.json").read_text())
    assert all(len(track["segmentations"]) == 3 for track in tracks)


def test_demo_errors_for_what_a_video_model_cannot_do(tmp_path, capsys):
    status, err = _run_demo(["--webcam"], capsys)
    assert status == 1 and "needs a whole clip" in err
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    status, err = _run_demo(["--video-input", clip, "--task", "panoptic"], capsys)
    assert status == 1 and "video instance segmentation model" in err


def test_image_predictor_is_not_a_video_predictor():
    # an image config still builds the image Predictor (the demo's choice is by the config)
    assert not isinstance(Predictor(IMAGE_CONFIG, ""), VideoPredictor)


def _fake_ytvis_2019_val(root):
    """The official YouTube-VIS 2019 val layout with two short videos and no ground truth."""
    rng = np.random.default_rng(2)
    videos = []
    for video_id, (name, length) in enumerate([("0a1b", 3), ("9z8y", 2)], start=1):
        folder = root / "ytvis_2019" / "valid" / "JPEGImages" / name
        folder.mkdir(parents=True)
        for frame in range(length):
            picture = rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)
            cv2.imwrite(str(folder / f"{5 * frame:05d}.jpg"), picture)
        files = [f"{name}/{5 * frame:05d}.jpg" for frame in range(length)]
        videos.append(
            {"id": video_id, "width": 48, "height": 36, "length": length, "file_names": files}
        )
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, 41)]
    (root / "ytvis_2019" / "valid.json").write_text(
        json.dumps({"videos": videos, "categories": categories})
    )


@pytest.mark.slow
def test_eval_only_on_the_official_val_layout_writes_the_submission_file(tmp_path):
    _fake_ytvis_2019_val(tmp_path / "datasets")
    opts = ["MODEL.DEVICE", "cpu", *NARROW_HEADS, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "40"]
    weights = tmp_path / "model.pth"
    torch.save({"model": build_model(load_config(CONFIG, opts)).state_dict()}, weights)
    command = [
        sys.executable, os.path.join(ROOT, "train_net.py"), "--eval-only",
        "--config-file", CONFIG, *opts, "MODEL.WEIGHTS", str(weights),
        "DATASETS.TEST", "('ytvis_2019_val',)", "MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO", "3",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ]  # fmt: skip
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "submit it to the YouTube-VIS challenge server" in run.stderr + run.stdout
    results = json.loads((tmp_path / "out" / "inference" / "results.json").read_text())
    assert sorted({entry["video_id"] for entry in results}) == [1, 2]
    assert len(results) == 2 * 3
    for entry in results:
        assert 1 <= entry["category_id"] <= 40  # the JSON's ids
        assert len(entry["segmentations"]) == {1: 3, 2: 2}[entry["video_id"]]
        for rle in entry["segmentations"]:
            assert rle is None or rle["size"] == [36, 48]  # the original frame size
