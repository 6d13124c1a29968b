"""The web demo's work (mask2former.apps.web.WebDemo) without a browser: results, bad uploads,
huge images, videos and the choice of weights; tests/test_web_browser.py drives the page."""

import os

import numpy as np
import pytest
from helpers import read_video, run_python, write_clip, write_random_png
from PIL import Image

pytest.importorskip("gradio", reason="the web demo needs gradio: pip install -r requirements.txt")

from mask2former.apps.cli import DemoError  # noqa: E402
from mask2former.apps.web import WebDemo, build_argument_parser, create_web_demo  # noqa: E402
from mask2former.predictor import Predictor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "configs", "demo_tiny_shapes.yaml")


@pytest.fixture(scope="module")
def predictor(weights):
    return Predictor(CONFIG, weights, score_threshold=0.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    image = write_random_png(folder / "photo.png", 90, 120)
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    text = folder / "notes.txt"
    text.write_text("hello")
    return {"image": str(image), "corrupt": str(corrupt), "text": str(text), "folder": folder}


def test_bad_uploads_get_a_message_and_the_app_keeps_working(predictor, files):
    demo = WebDemo(predictor, model_name="tiny")
    for path, expected in [
        (files["corrupt"], "corrupt.jpg: cannot decode the image"),
        (files["text"], "notes.txt: unsupported format '.txt'"),
        (write_clip(files["folder"] / "clip.mp4", 2), "clip.mp4 is a video: segment it in the"),
    ]:
        result = demo.segment_image(path, "panoptic", 0.5)
        assert result.message.startswith("**Error:**") and expected in result.message
        assert str(files["folder"]) not in result.message, "names the upload, not a temp path"
        assert result.picture is None and result.files == []
    assert "Upload an image" in demo.segment_image(None, "panoptic", 0.5).message

    result = demo.segment_image(files["image"], "panoptic", 0.5)
    assert "Panoptic segmentation of photo.png (120×90)" in result.message
    assert result.picture.shape == (90, 120, 3)
    assert sorted(os.path.basename(path) for path in result.files) == [
        "photo.instances.json",
        "photo.panoptic.json",
        "photo.panoptic.png",
        "photo.semantic.png",
    ]


def test_huge_image_is_downscaled_with_a_note(predictor, files):
    demo = WebDemo(predictor, model_name="tiny", max_image_size=64)
    result = demo.segment_image(files["image"], "semantic", 0.5)
    assert "The image is 120×90 pixels: it was downscaled to 64×48" in result.message
    assert result.picture.shape == (48, 64, 3)
    semantic_png = next(path for path in result.files if path.endswith(".semantic.png"))
    assert np.asarray(Image.open(semantic_png)).shape == (48, 64)


def test_threshold_and_task_filter_without_running_the_model_again(predictor, files, monkeypatch):
    demo = WebDemo(predictor, model_name="tiny")
    everything = demo.segment_image(files["image"], "instance", 0.0)
    scores = predictor(files["image"]).instances.scores
    threshold = float(np.median(scores))
    calls = []
    forward = predictor.predict_arrays
    monkeypatch.setattr(
        predictor, "predict_arrays", lambda images: calls.append(1) or forward(images)
    )

    some = demo.segment_image(files["image"], "instance", threshold)
    kept = int((scores >= threshold).sum())
    assert 0 < kept < len(scores)
    annotations = some.segments[1]
    assert len(annotations) == len(some.details) == min(kept, 50) < len(everything.segments[1])
    labels = [label for _, label in annotations]
    assert len(set(labels)) == len(labels) and set(some.colors) == set(labels)
    assert all(mask.shape == (90, 120) for mask, _ in annotations)
    for task in ("panoptic", "semantic"):
        assert demo.segment_image(files["image"], task, threshold).picture.shape == (90, 120, 3)
    assert calls == [], "the task and threshold reuse the last prediction"

    other = files["folder"] / "other.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(other)
    assert demo.segment_image(str(other), "panoptic", threshold).picture.shape == (30, 40, 3)
    assert calls == [1]


def test_video_is_capped_and_reports_progress(predictor, tmp_path):
    demo = WebDemo(predictor, model_name="tiny", max_video_frames=4)
    progress = []
    result = demo.segment_video(
        write_clip(tmp_path / "clip.mp4", 6),
        "instance",
        0.5,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert "4 frames" in result.message
    assert "only the first 4 of its 6 frames" in result.message
    assert "--max-video-frames" in result.message
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.video.endswith("clip.webm")
    assert read_video(result.video)[1] == [(40, 56, 3)] * 4

    result = demo.segment_video(write_clip(tmp_path / "short.mp4", 3), "panoptic", 0.5)
    assert "3 frames" in result.message and "frame cap" not in result.message


def test_video_without_frames_gets_a_message(predictor, tmp_path):
    demo = WebDemo(predictor, model_name="tiny")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"definitely not a video")
    for path in (str(garbage), write_clip(tmp_path / "empty.mp4", 0)):
        result = demo.segment_video(path, "panoptic", 0.5)
        assert result.message.startswith("**Error:**") and result.video is None
        name = os.path.basename(path)
        assert f"{name}: cannot open the video" in result.message or (
            f"{name}: no frame could be decoded" in result.message
        )
    assert "Upload a video" in demo.segment_video(None, "panoptic", 0.5).message
    assert (
        "3 frames"
        in demo.segment_video(write_clip(tmp_path / "good.mp4", 3), "panoptic", 0.5).message
    )


def test_the_quickstart_model_is_the_default(weights, tmp_path):
    parser = build_argument_parser(default_config=CONFIG)
    missing = str(tmp_path / "model_final.pth")
    with pytest.raises(DemoError, match="run `make quickstart`"):
        create_web_demo(parser.parse_args([]), quickstart_model=(CONFIG, missing))

    demo = create_web_demo(parser.parse_args([]), quickstart_model=(CONFIG, weights))
    assert demo.predictor.cfg.MODEL.WEIGHTS == weights
    assert weights in demo.describe_model() and "circle, triangle" in demo.describe_model()

    other = tmp_path / "other.yaml"
    other.write_text(f"_BASE_: {CONFIG}\n")
    with pytest.raises(DemoError, match="--opts MODEL.WEIGHTS PATH"):
        create_web_demo(
            parser.parse_args(["--config-file", str(other)]), quickstart_model=(CONFIG, weights)
        )


def test_package_imports_without_gradio():
    code = (
        "import sys\n"
        "sys.modules['gradio'] = None\n"  # import gradio now raises ImportError
        "import mask2former, mask2former.apps.browser, mask2former.apps.cli\n"
        "try:\n"
        "    import mask2former.apps.web\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = run_python(code)
    assert "needs gradio" in result.stdout and "pip install -r requirements.txt" in result.stdout


def test_the_app_script_tunes_the_cpu_allocator(weights, monkeypatch):
    """demo/app.py owns its process, so it switches on the allocator setting that a library
    user of the Predictor has to ask for."""
    import importlib.util

    from mask2former import predictor as predictor_module
    from mask2former.apps import web

    calls = []
    monkeypatch.setattr(predictor_module, "keep_freed_memory", lambda: calls.append(1) or True)
    launched = []
    monkeypatch.setattr(
        web, "build_app", lambda demo, **options: launched.append(demo) or _NoServer()
    )
    spec = importlib.util.spec_from_file_location("demo_app", os.path.join(ROOT, "demo", "app.py"))
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    status = app.main(["--config-file", CONFIG, "--opts", "MODEL.WEIGHTS", weights])
    assert status == 0 and calls == [1] and len(launched) == 1


class _NoServer:
    def launch(self, **options):
        pass
