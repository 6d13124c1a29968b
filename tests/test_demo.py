"""demo/demo.py end to end on a tiny random model: pictures, machine-readable results, videos,
and a clear message plus exit status 1 for every kind of bad input."""

import json
import os
import subprocess
import sys
import tracemalloc

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from helpers import (
    PRECISION_TOLERANCE,
    ROOT,
    load_script,
    on_cuda,
    read_video,
    write_clip,
    write_random_png,
)
from helpers import TINY_CONFIG as CONFIG
from panopticapi.utils import rgb2id
from PIL import Image

import mask2former.apps.cli as demo_utils
from mask2former import predictor as predictor_module
from mask2former.predictor import Predictor

REAL_VIDEO_CAPTURE = cv2.VideoCapture  # the webcam tests replace cv2.VideoCapture
demo = load_script("demo/demo.py")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two good images, plus a corrupt one, a text file and a missing path."""
    folder = tmp_path_factory.mktemp("inputs")
    good = [
        write_random_png(folder / f"good{index}.png", *size, seed=index)
        for index, size in enumerate([(40, 56), (52, 44)])
    ]
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    text = folder / "notes.txt"
    text.write_text("hello")
    return {
        "good": good,
        "corrupt": str(corrupt),
        "text": str(text),
        "missing": str(folder / "missing.png"),
    }


def _run(argv, capsys):
    status = demo.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_batch_with_bad_inputs_writes_every_good_one(weights, images, tmp_path, capsys):
    output = tmp_path / "out"
    inputs = [images["corrupt"], images["good"][0], images["missing"], images["text"]]
    inputs.append(images["good"][1])
    status, out, err = _run(
        ["--config-file", CONFIG, "--input", *inputs, "--output", str(output)]
        + ["--batch-size", "2", "--confidence-threshold", "0", "--opts", "MODEL.WEIGHTS", weights],
        capsys,
    )
    assert status == 1
    assert "3 input(s) failed" in err
    assert f"{images['corrupt']}: " in err and "corrupt" in err
    assert f"{images['missing']}: no such file" in err
    assert f"{images['text']}: unsupported format '.txt'" in err
    assert str(output) in out

    predictor = Predictor(CONFIG, weights, score_threshold=0.0)
    for path in images["good"]:
        stem = os.path.splitext(os.path.basename(path))[0]
        picture = cv2.imread(str(output / f"{stem}.png"))
        image = np.asarray(Image.open(path))
        assert picture.shape == image.shape
        expected = predictor(path)

        # panoptic: PNG ids (panopticapi rgb2id) match the JSON segments and the prediction
        panoptic_ids = rgb2id(np.asarray(Image.open(output / f"{stem}.panoptic.png")))
        np.testing.assert_array_equal(panoptic_ids, expected.panoptic.segment_ids)
        with open(output / f"{stem}.panoptic.json") as f:
            panoptic = json.load(f)
        assert panoptic["file_name"] == f"{stem}.panoptic.png"
        segments = panoptic["segments_info"]
        assert {s["id"] for s in segments} == set(np.unique(panoptic_ids).tolist()) - {0}
        for segment in segments:
            mask = panoptic_ids == segment["id"]
            assert segment["area"] == int(mask.sum())
            ys, xs = np.nonzero(mask)
            assert segment["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            # shapes data set ids are contiguous index + 1
            assert segment["isthing"] == int(segment["category_id"] <= 4)
        category_names = {c["id"]: c["name"] for c in panoptic["categories"]}
        assert all(category_names[s["category_id"]] == s["category_name"] for s in segments)

        # instances: COCO results list whose RLE decodes to the predicted masks
        with open(output / f"{stem}.instances.json") as f:
            instances = json.load(f)
        assert len(instances) == len(expected.instances) > 0
        decoded = mask_util.decode([entry["segmentation"] for entry in instances])
        np.testing.assert_array_equal(
            decoded.transpose(2, 0, 1).astype(bool), expected.instances.masks
        )
        for entry, box, score in zip(
            instances, expected.instances.boxes, expected.instances.scores
        ):
            x0, y0, x1, y1 = box.tolist()
            assert entry["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
            assert entry["score"] == pytest.approx(float(score), abs=1e-6)
            assert entry["image_id"] == stem

        # semantic: uint8 label map
        semantic = np.asarray(Image.open(output / f"{stem}.semantic.png"))
        assert semantic.dtype == np.uint8 and semantic.shape == image.shape[:2]
        np.testing.assert_array_equal(semantic, expected.semantic.label_map)


def _instances_json(output, stem="good0"):
    with open(os.path.join(output, f"{stem}.instances.json")) as f:
        return json.load(f)


def test_confidence_threshold_filters_instances(weights, images, tmp_path, capsys):
    common = ["--config-file", CONFIG, "--input", images["good"][0], "--task", "instance"]
    weights_opts = ["--opts", "MODEL.WEIGHTS", weights]
    status, _, _ = _run(
        common + ["--output", str(tmp_path / "all"), "--confidence-threshold", "0"] + weights_opts,
        capsys,
    )
    assert status == 0
    scores = sorted(entry["score"] for entry in _instances_json(tmp_path / "all"))
    threshold = float(np.median(scores))
    status, _, _ = _run(
        common
        + ["--output", str(tmp_path / "some"), "--confidence-threshold", str(threshold)]
        + weights_opts,
        capsys,
    )
    assert status == 0
    kept = _instances_json(tmp_path / "some")
    assert 0 < len(kept) < len(scores)
    assert len(kept) == sum(score >= threshold for score in scores)
    assert all(entry["score"] >= threshold for entry in kept)


def test_single_output_file_and_semantic_task(weights, images, tmp_path, capsys):
    target = tmp_path / "picture.jpg"
    status, _, _ = _run(
        ["--config-file", CONFIG, "--input", images["good"][1], "--output", str(target)]
        + ["--task", "semantic", "--opts", "MODEL.WEIGHTS", weights],
        capsys,
    )
    assert status == 0
    assert cv2.imread(str(target)).shape == (52, 44, 3)
    assert (tmp_path / "picture.semantic.png").is_file()
    assert (tmp_path / "picture.panoptic.json").is_file()


def test_video_keeps_frame_rate_size_and_frame_count(weights, tmp_path, capsys):
    source = write_clip(tmp_path / "clip.mp4", frames=6, fps=7.0, size=(56, 40))

    status, _, _ = _run(
        ["--config-file", CONFIG, "--video-input", source, "--output", str(tmp_path / "out")]
        + ["--batch-size", "3", "--task", "panoptic", "--opts", "MODEL.WEIGHTS", weights],
        capsys,
    )
    assert status == 0
    fps, shapes = read_video(tmp_path / "out" / "clip.mp4")
    assert fps == pytest.approx(7.0)
    assert shapes == [(40, 56, 3)] * 6


def test_video_memory_does_not_grow_with_its_length(weights, tmp_path):
    # Frames and pictures are numpy arrays, which tracemalloc sees. Each frame's drawing is a
    # matplotlib reference cycle holding a few copies of it: if the demo left those to Python's
    # rare full collections, the peak for 15 frames would exceed the one for 3 by ~12 x 3
    # frames.
    predictor = Predictor(CONFIG, weights)
    size = (160, 120)
    # One frame repeated: the peak is the largest single frame's work, which depends on what
    # the (random) model finds in it, so with changing noise frames a longer clip's peak is
    # higher by chance (measured: up to +250 KB between 3 and 15 frames, and rising with the
    # length, for some seeds); with a still clip it stays within 40 KB up to 60 frames.
    short = write_clip(tmp_path / "short.mp4", frames=3, size=size, still=True)
    long = write_clip(tmp_path / "long.mp4", frames=15, size=size, still=True)
    run_video = demo_utils.run_video
    run_video(predictor, short, str(tmp_path / "warm-up.mp4"), "panoptic", progress=False)
    peaks = []
    for clip in (short, long):
        tracemalloc.start()
        try:
            run_video(predictor, clip, str(tmp_path / "out.mp4"), "panoptic", progress=False)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    frame_bytes = size[0] * size[1] * 3
    assert peaks[1] - peaks[0] < 2 * frame_bytes, peaks


@pytest.fixture
def fake_webcam(monkeypatch, tmp_path):
    """Camera 0 plays a short clip (no camera here); returns the clip's path."""
    clip = write_clip(tmp_path / "camera.mp4", 5)

    def capture(source, *args):
        assert source == 0, "the demo reads the first camera"
        return REAL_VIDEO_CAPTURE(clip)

    monkeypatch.setattr(demo_utils.cv2, "VideoCapture", capture)
    return clip


def test_webcam_recorded_to_a_file(weights, fake_webcam, tmp_path, capsys):
    output = tmp_path / "webcam.mp4"
    status, _, err = _run(
        ["--config-file", CONFIG, "--webcam", "--output", str(output)]
        + ["--opts", "MODEL.WEIGHTS", weights],
        capsys,
    )
    assert status == 0, err
    fps, shapes = read_video(output)
    assert fps == pytest.approx(7.0)
    assert shapes == [(40, 56, 3)] * 5


@pytest.mark.skipif(
    "headless" not in cv2.getBuildInformation().lower() and bool(os.environ.get("DISPLAY")),
    reason="needs an OpenCV that cannot show windows",
)
def test_webcam_without_output_on_headless_opencv(weights, fake_webcam, capsys):
    status, _, err = _run(
        ["--config-file", CONFIG, "--webcam", "--opts", "MODEL.WEIGHTS", weights], capsys
    )
    assert status == 1
    assert "cannot show windows" in err and "--output" in err


def test_no_webcam(weights, monkeypatch, tmp_path, capsys):
    missing = str(tmp_path / "no-camera.mp4")
    monkeypatch.setattr(demo_utils.cv2, "VideoCapture", lambda source: REAL_VIDEO_CAPTURE(missing))
    status, _, err = _run(
        ["--config-file", CONFIG, "--webcam", "--opts", "MODEL.WEIGHTS", weights], capsys
    )
    assert status == 1 and "cannot open webcam 0" in err


def test_video_that_cannot_be_opened(tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"definitely not a video")
    status, _, err = _run(
        ["--config-file", CONFIG, "--video-input", str(broken), "--output", str(tmp_path)], capsys
    )
    assert status == 1
    assert f"{broken}: cannot open the video" in err
    status, _, err = _run(
        ["--config-file", CONFIG, "--video-input", str(tmp_path / "gone.mp4")], capsys
    )
    assert status == 1 and "gone.mp4: no such video file" in err


def test_missing_weights_file(images, tmp_path, capsys):
    missing = str(tmp_path / "model_final.pth")
    status, _, err = _run(
        ["--config-file", CONFIG, "--input", images["good"][0], "--output", str(tmp_path)]
        + ["--opts", "MODEL.WEIGHTS", missing],
        capsys,
    )
    assert status == 1
    assert f"Weights file '{missing}' does not exist" in err
    assert not list(tmp_path.glob("*.png"))


def test_config_typos_and_missing_config(images, tmp_path, capsys):
    base = ["--input", images["good"][0], "--output", str(tmp_path)]
    status, _, err = _run(
        ["--config-file", CONFIG] + base + ["--opts", "MODEL.MASK_FORMER.TEST.PANOPTIC", "True"],
        capsys,
    )
    assert status == 1
    assert "MODEL.MASK_FORMER.TEST.PANOPTIC (did you mean MODEL.MASK_FORMER.TEST.PANOPTIC_ON" in err

    typo = tmp_path / "typo.yaml"
    typo.write_text(f"_BASE_: {CONFIG}\nMODEL:\n  MASK_FORMER:\n    HIDEN_DIM: 16\n")
    status, _, err = _run(["--config-file", str(typo)] + base, capsys)
    assert status == 1
    assert str(typo) in err and "MODEL.MASK_FORMER.HIDEN_DIM" in err and "HIDDEN_DIM" in err

    status, _, err = _run(["--config-file", str(tmp_path / "nowhere.yaml")] + base, capsys)
    assert status == 1 and "nowhere.yaml" in err and "--config-file" in err


def test_command_line_exit_status(tmp_path):
    """The script itself, as a user runs it: a typo in --opts exits non-zero with the key."""
    command = [sys.executable, os.path.join(ROOT, "demo", "demo.py"), "--config-file", CONFIG]
    command += ["--input", str(tmp_path), "--opts", "MODEL.WEIGTHS", "x.pth"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert "MODEL.WEIGTHS (did you mean MODEL.WEIGHTS" in result.stderr


def test_the_demo_script_tunes_the_cpu_allocator(weights, images, tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(predictor_module, "keep_freed_memory", lambda: calls.append(1) or True)
    argv = ["--config-file", CONFIG, "--input", images["good"][0], "--output", str(tmp_path)]
    status, _, _ = _run(argv + ["--opts", "MODEL.WEIGHTS", weights], capsys)
    assert status == 0 and calls == [1]


# The CPU case proves the test here; `pytest -m cuda` runs the others on a GPU.
@pytest.mark.parametrize(
    "device, precision",
    [
        ("cpu", "bf16"),
        on_cuda("cuda", "fp32"),
        on_cuda("cuda", "bf16"),
        on_cuda("cuda", "fp16"),
    ],
)
def test_device_and_precision_options(
    weights, images, tmp_path, capsys, monkeypatch, no_tf32, device, precision
):
    """--device and --precision reach the predictor, and its results written to files agree
    with float32 on the CPU (helpers.PRECISION_TOLERANCE)."""
    ran_with = []
    predict_arrays = Predictor.predict_arrays

    def spy(self, arrays):
        ran_with.append((next(self.model.parameters()).device.type, self.precision))
        return predict_arrays(self, arrays)

    monkeypatch.setattr(Predictor, "predict_arrays", spy)
    output = tmp_path / "out"
    status, _, err = _run(
        ["--config-file", CONFIG, "--input", *images["good"], "--output", str(output)]
        + ["--device", device, "--precision", precision, "--confidence-threshold", "0"]
        + ["--opts", "MODEL.WEIGHTS", weights],
        capsys,
    )
    assert status == 0, err
    assert set(ran_with) == {(device, precision)}
    monkeypatch.undo()
    reference = Predictor(CONFIG, weights, device="cpu", score_threshold=0.0)
    for path in images["good"]:
        stem = os.path.splitext(os.path.basename(path))[0]
        for suffix in [".png", ".panoptic.png", ".panoptic.json", ".semantic.png"]:
            assert (output / f"{stem}{suffix}").is_file(), suffix
        expected = reference(path).instances.scores
        scores = [entry["score"] for entry in _instances_json(output, stem)]
        assert len(scores) == len(expected) > 0
        np.testing.assert_allclose(
            sorted(scores, reverse=True), expected, atol=PRECISION_TOLERANCE[precision]
        )


def test_sliding_windows_give_every_output(weights, images, tmp_path, capsys):
    windows = ["MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED", "True", "INPUT.MIN_SIZE_TEST", "0"]
    windows += ["MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.SIZE", "[32, 48]"]
    windows += ["MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.STRIDE", "[24, 24]"]
    command = ["--config-file", CONFIG, "--input", images["good"][0], "--output", str(tmp_path)]
    status, _, _ = _run([*command, "--opts", "MODEL.WEIGHTS", weights, *windows], capsys)
    assert status == 0
    for suffix in ("panoptic.json", "panoptic.png", "instances.json", "semantic.png"):
        assert (tmp_path / f"good0.{suffix}").is_file(), suffix


def test_cuda_graphs_option_is_refused_where_it_cannot_run(weights, images, tmp_path, capsys):
    base = ["--config-file", CONFIG, "--input", images["good"][0], "--output", str(tmp_path)]
    base += ["--cuda-graphs"]
    status, _, err = _run(base + ["--device", "cpu", "--opts", "MODEL.WEIGHTS", weights], capsys)
    assert status == 1 and "--cuda-graphs replays the model on a GPU" in err
    assert "the device is cpu" in err and "Traceback" not in err
    video = os.path.join(ROOT, "configs", "shapes", "video_maskformer2_R18.yaml")
    status, _, err = _run(
        ["--config-file", video, "--input", images["good"][0], "--cuda-graphs"], capsys
    )
    assert status == 1 and "not a video model" in err
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("precision", [on_cuda("fp32"), on_cuda("bf16")])
def test_cuda_graphs_option_agrees_with_float32_on_the_cpu(
    weights, images, tmp_path, capsys, no_tf32, precision
):
    output = tmp_path / "out"
    status, _, err = _run(
        ["--config-file", CONFIG, "--input", *images["good"], "--output", str(output)]
        + ["--device", "cuda", "--precision", precision, "--cuda-graphs"]
        + ["--confidence-threshold", "0", "--opts", "MODEL.WEIGHTS", weights],
        capsys,
    )
    assert status == 0, err
    reference = Predictor(CONFIG, weights, device="cpu", score_threshold=0.0)
    for path in images["good"]:
        stem = os.path.splitext(os.path.basename(path))[0]
        expected = reference(path).instances.scores
        scores = [entry["score"] for entry in _instances_json(output, stem)]
        assert len(scores) == len(expected) > 0
        np.testing.assert_allclose(
            sorted(scores, reverse=True), expected, atol=PRECISION_TOLERANCE[precision]
        )
