"""The web demo behind ``demo/app.py``: a Gradio page over a :class:`~mask2former.Predictor`.

Image tab: upload an image or pick an example, choose the task and the instance confidence
threshold, and see

- the picture the command-line demo draws (Detectron2's ``Visualizer``);
- the segments over the image, listed in a legend by class and score (hover a name to see its
  segment, click it for its details);
- the machine-readable results to download, written by
  :func:`~mask2former.utils.export.write_prediction` as the command-line demo writes them.

Video tab: a clip is segmented frame by frame by the command-line demo's video loop
(:func:`~mask2former.apps.cli.run_video`: frames are streamed, memory stays bounded), up to
a frame cap, with a progress bar.

Requests wait in Gradio's queue and run one at a time on the model. A bad upload gets a
message on the page and the app keeps working. :class:`WebDemo` does the work with plain
values in and out (testable without a browser); :func:`build_app` lays out the page.
"""

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

try:
    import gradio as gr
except ImportError as error:
    raise ImportError(
        "The web demo needs gradio, which is not installed: pip install -r requirements.txt "
        "(it pins the version)."
    ) from error

from ..data import is_video_config
from ..predictor import Predictor
from ..utils.export import write_prediction
from ..utils.image_io import ImageReadError, expand_image_inputs
from ..utils.results import Prediction
from ..utils.visualization import TASKS, display_metadata, draw_prediction
from .cli import (
    DemoError,
    add_model_arguments,
    build_predictor,
    default_task,
    load_demo_config,
    open_onnx,
    run_video,
)

__all__ = [
    "ImageResult",
    "VideoResult",
    "WebDemo",
    "build_app",
    "build_argument_parser",
    "create_web_demo",
    "serve",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_SIZE = 2048
DEFAULT_MAX_VIDEO_FRAMES = 300
# Segments listed in the legend at most (the highest-scoring ones, for instances).
MAX_LISTED_SEGMENTS = 50
# Folders of results kept on disk; older ones are deleted (Gradio has copied what it serves).
_KEPT_REQUESTS = 32
_SHOWN_HEIGHT = 420  # pixels of the page given to a picture
# Small pictures are enlarged to the space they are given, as the segments beside them are.
PAGE_CSS = "#overlay img { width: 100%; height: 100%; object-fit: contain; }"
_VIDEO_EXTENSIONS = frozenset(
    [".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"]
)


@dataclass
class ImageResult:
    """What the image tab shows for one request.

    Attributes:
        message: Markdown: the time per image and notes, or what went wrong.
        picture: (H, W, 3) uint8 RGB picture of the chosen task, or None.
        segments: the image and one (mask, label) pair per listed segment (the value of a
            ``gr.AnnotatedImage``), or None. Masks are (H, W) float32 in {0, 1}.
        colors: label -> "#rrggbb", the colour of the segment's class.
        details: Markdown describing each listed segment, in the order of ``segments``.
        files: the machine-readable results written.
    """

    message: str
    picture: Optional[np.ndarray] = None
    segments: Optional[Tuple[np.ndarray, List[Tuple[np.ndarray, str]]]] = None
    colors: Dict[str, str] = field(default_factory=dict)
    details: List[str] = field(default_factory=list)
    files: List[str] = field(default_factory=list)


@dataclass
class VideoResult:
    """What the video tab shows for one request: a Markdown message and the video (or None)."""

    message: str
    video: Optional[str] = None


@dataclass
class _Segment:
    mask: np.ndarray  # (H, W) bool
    class_index: int
    score: Optional[float]
    description: str


def _error(text: str) -> str:
    return f"**Error:** {text}"


def _hex(color: Sequence[int]) -> str:
    return "#" + "".join(f"{int(channel):02x}" for channel in color[:3])


class WebDemo:
    """The web demo's work: segment an uploaded image or video with a predictor.

    Not thread-safe: the page runs one request at a time (Gradio's queue).
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        model_name: str,
        max_image_size: int = DEFAULT_MAX_IMAGE_SIZE,
        max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
        examples: Sequence[str] = (),
        default_task: str = TASKS[0],
    ):
        """
        Args:
            predictor: the model, built with every task on (the page offers each) and a
                score threshold of 0 (the page filters instances per request).
            model_name: shown on the page (e.g. the config's name and the weights file).
            max_image_size: longer images are downscaled so that their long side is this.
            max_video_frames: frames of a video processed at most.
            examples: image files offered as examples.
            default_task: the task chosen when the page opens.
        """
        if max_image_size < 1 or max_video_frames < 1:
            raise ValueError("max_image_size and max_video_frames must be at least 1.")
        self.predictor = predictor
        self.model_name = model_name
        self.max_image_size = max_image_size
        self.max_video_frames = max_video_frames
        self.examples = list(examples)
        self.default_task = default_task
        self._shown = display_metadata(predictor.metadata, len(predictor.class_names))
        self._work_dir = tempfile.TemporaryDirectory(prefix="mask2former-web-")
        self._request_dirs: Deque[str] = deque()
        # (key, image in INPUT.FORMAT, note, seconds, prediction) of the last image, so that
        # changing the task or the threshold does not run the model again
        self._last: Optional[Tuple[tuple, np.ndarray, Optional[str], float, Prediction]] = None

    def describe_model(self) -> str:
        """Markdown: the model's name, device, precision and classes."""
        names = self.predictor.class_names
        return (
            f"**Model:** {self.model_name} · **backend:** {self.predictor.backend} · "
            f"**device:** {self.predictor.device} · **precision:** {self.predictor.precision}  \n"
            f"**Classes ({len(names)}):** {', '.join(names)}"
        )

    def _request_dir(self) -> str:
        folder = tempfile.mkdtemp(dir=self._work_dir.name)
        self._request_dirs.append(folder)
        while len(self._request_dirs) > _KEPT_REQUESTS:
            shutil.rmtree(self._request_dirs.popleft(), ignore_errors=True)
        return folder

    def _fit(self, image: np.ndarray) -> Tuple[np.ndarray, Optional[str]]:
        """Downscale an image whose long side exceeds max_image_size; say so in a note."""
        height, width = image.shape[:2]
        scale = self.max_image_size / max(height, width)
        if scale >= 1:
            return image, None
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        note = (
            f"The image is {width}×{height} pixels: it was downscaled to {size[0]}×{size[1]} "
            f"(at most {self.max_image_size} pixels a side, `--max-image-size`), and the "
            "results are at that size."
        )
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA), note

    def _predict(self, path: str) -> Tuple[np.ndarray, Optional[str], float, Prediction]:
        try:
            stat = os.stat(path)
            key: Optional[tuple] = (path, stat.st_size, stat.st_mtime_ns)
        except OSError:
            key = None
        if key is not None and self._last is not None and self._last[0] == key:
            return self._last[1:]
        image, note = self._fit(self.predictor.read(path))
        start = time.perf_counter()
        prediction = self.predictor.predict_arrays([image])[0]
        seconds = time.perf_counter() - start
        self._last = (key, image, note, seconds, prediction)
        return image, note, seconds, prediction

    def segment_image(self, path: Optional[str], task: str, score_threshold: float) -> ImageResult:
        """Segment an image file; every problem is returned as a message.

        Args:
            path: the uploaded file.
            task: the task drawn and listed ("panoptic", "instance" or "semantic").
            score_threshold: instances scoring below it are dropped (pictures and files).
        """
        if not path:
            return ImageResult("Upload an image or pick an example.")
        name = os.path.basename(path)
        if os.path.splitext(name)[1].lower() in _VIDEO_EXTENSIONS:
            return ImageResult(_error(f"{name} is a video: segment it in the Video tab."))
        try:
            image, note, seconds, prediction = self._predict(path)
        except ImageReadError as error:
            return ImageResult(_error(str(error).replace(path, name)))
        if task not in prediction.available_tasks():
            return ImageResult(_error(f"this model does not compute {task} results."))
        prediction = prediction.with_instance_threshold(score_threshold)
        rgb = image if self.predictor.input_format == "RGB" else image[:, :, ::-1]
        picture = draw_prediction(rgb, prediction, task, self._shown)
        stem = os.path.splitext(name)[0]
        files = write_prediction(
            prediction, self._request_dir(), stem, metadata=self.predictor.metadata
        )
        segments = list(self._segments(prediction, task))
        annotations, colors, details = self._legend(segments[:MAX_LISTED_SEGMENTS])
        height, width = rgb.shape[:2]
        lines = [
            f"{task.capitalize()} segmentation of {name} ({width}×{height}): "
            f"{seconds:.2f} s per image on {self.predictor.device}; {len(segments)} segments."
        ]
        if len(segments) > MAX_LISTED_SEGMENTS:
            lines.append(f"The legend lists the first {MAX_LISTED_SEGMENTS} segments.")
        if note:
            lines.append(note)
        return ImageResult(
            message="  \n".join(lines),
            picture=picture,
            segments=(rgb, annotations),
            colors=colors,
            details=details,
            files=files,
        )

    def _segments(self, prediction: Prediction, task: str) -> Iterator[_Segment]:
        names = self.predictor.class_names
        if task == "panoptic":
            for segment in prediction.panoptic.segments:
                kind = "thing" if segment["isthing"] else "stuff"
                score = segment["score"]
                scored = "" if score is None else f", score {score:.3f}"
                yield _Segment(
                    prediction.panoptic.segment_ids == segment["id"],
                    segment["category_id"],
                    score,
                    f"{segment['category_name']} ({kind}){scored}, {segment['area']} pixels, "
                    f"segment id {segment['id']}",
                )
        elif task == "instance":
            instances = prediction.instances
            for mask, box, score, index in zip(
                instances.masks, instances.boxes, instances.scores, instances.classes
            ):
                x0, y0, x1, y1 = (int(round(float(value))) for value in box)
                yield _Segment(
                    mask,
                    int(index),
                    float(score),
                    f"{names[index]}, score {float(score):.3f}, {int(mask.sum())} pixels, "
                    f"box ({x0}, {y0})–({x1}, {y1})",
                )
        else:
            label_map = prediction.semantic.label_map
            for index in np.unique(label_map).tolist():
                mask = label_map == index
                share = 100.0 * mask.mean()
                yield _Segment(
                    mask, index, None, f"{names[index]}, {int(mask.sum())} pixels ({share:.1f}%)"
                )

    def _legend(self, segments: Sequence[_Segment]):
        """(annotations, colors, details) for gr.AnnotatedImage: one unique label a segment."""
        annotations, colors, details = [], {}, []
        counts: Dict[str, int] = {}
        for segment in segments:
            label = self.predictor.class_names[segment.class_index]
            if segment.score is not None:
                label = f"{label} {segment.score:.2f}"
            counts[label] = counts.get(label, 0) + 1
            if counts[label] > 1:
                label = f"{label} #{counts[label]}"
            annotations.append((segment.mask.astype(np.float32), label))
            colors[label] = _hex(self._shown.stuff_colors[segment.class_index])
            details.append(f"**{label}**: {segment.description}")
        return annotations, colors, details

    def segment_video(
        self,
        path: Optional[str],
        task: str,
        score_threshold: float,
        on_progress: Optional[Callable[[int, Optional[int]], None]] = None,
    ) -> VideoResult:
        """Segment a video file into a WebM video; every problem is returned as a message.

        Args:
            path: the uploaded file.
            task: the task drawn.
            score_threshold: instances scoring below it are dropped.
            on_progress: called with (frames done, frames to do or None).
        """
        if not path:
            return VideoResult("Upload a video.")
        name = os.path.basename(path)
        output = os.path.join(self._request_dir(), os.path.splitext(name)[0] + ".webm")
        done = [0]

        def progress(frames: int, total: Optional[int]) -> None:
            done[0] = frames
            if on_progress is not None:
                on_progress(frames, total)

        start = time.perf_counter()
        try:
            report = run_video(
                self.predictor,
                path,
                output,
                task,
                progress=False,
                max_frames=self.max_video_frames,
                on_progress=progress,
                score_threshold=score_threshold,
            )
        except DemoError as error:
            return VideoResult(_error(str(error).replace(path, name)))
        seconds = time.perf_counter() - start
        if report.failures:
            return VideoResult(_error(f"{name}: {report.failures[0][1]}."))
        lines = [
            f"{task.capitalize()} segmentation of {name}: {done[0]} frames in {seconds:.1f} s "
            f"({seconds / done[0]:.2f} s per frame) on {self.predictor.device}."
        ]
        lines += [
            note.replace(path, name) + " Raise the cap with `--max-video-frames`."
            for note in report.notes
        ]
        return VideoResult("  \n".join(lines), output)


def _task_controls(tab: str, task: str, score_threshold: float):
    """A tab's task choice and instance confidence threshold (element ids "<tab>-task" and
    "<tab>-threshold")."""
    task_choice = gr.Radio(list(TASKS), value=task, label="Task", elem_id=f"{tab}-task")
    threshold = gr.Slider(
        0.0,
        1.0,
        value=score_threshold,
        step=0.01,
        label="Instance confidence threshold",
        elem_id=f"{tab}-threshold",
    )
    return task_choice, threshold


def build_app(
    demo: WebDemo, *, score_threshold: float = 0.5, title: str = "Mask2Former"
) -> gr.Blocks:
    """The page: an image tab and a video tab over ``demo``, with a queue.

    Args:
        score_threshold: the instance confidence threshold when the page opens.
    """
    task = demo.default_task
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}")
        gr.Markdown(demo.describe_model(), elem_id="model-info")
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column(scale=1):
                    image_file = gr.File(label="Image", elem_id="image-input")
                    image_task, image_threshold = _task_controls("image", task, score_threshold)
                    image_button = gr.Button("Segment", variant="primary")
                    if demo.examples:
                        gr.Examples([[path] for path in demo.examples], inputs=[image_file])
                with gr.Column(scale=2):
                    image_status = gr.Markdown(
                        "Upload an image or pick an example.", elem_id="image-status"
                    )
                    with gr.Row():
                        picture = gr.Image(
                            label="Result",
                            format="png",
                            interactive=False,
                            height=_SHOWN_HEIGHT,
                            elem_id="overlay",
                        )
                        segments = gr.AnnotatedImage(
                            label="Segments (hover a name to see it, click it for details)",
                            format="png",
                            height=_SHOWN_HEIGHT,
                            elem_id="segments",
                        )
                    selected = gr.Markdown(elem_id="selected-segment")
                    downloads = gr.File(
                        label="Results (the files demo/demo.py writes)",
                        file_count="multiple",
                        interactive=False,
                        elem_id="downloads",
                    )
            details = gr.State([])
        with gr.Tab("Video"):
            with gr.Row():
                with gr.Column(scale=1):
                    # a file, not gr.Video: OpenCV reads videos browsers cannot preview
                    video_file = gr.File(label="Video", elem_id="video-input")
                    video_task, video_threshold = _task_controls("video", task, score_threshold)
                    video_button = gr.Button("Segment the video", variant="primary")
                    gr.Markdown(f"At most {demo.max_video_frames} frames are processed.")
                with gr.Column(scale=2):
                    video_status = gr.Markdown("Upload a video.", elem_id="video-status")
                    video_output = gr.Video(
                        label="Result",
                        interactive=False,
                        height=_SHOWN_HEIGHT,
                        elem_id="video-output",
                    )

        def on_image(path, chosen_task, threshold):
            result = demo.segment_image(path, chosen_task, threshold)
            shown = gr.AnnotatedImage(value=result.segments, color_map=result.colors)
            files = result.files or None
            return result.message, result.picture, shown, files, result.details, ""

        def on_select(listed, event: gr.SelectData):
            index = event.index
            return listed[index] if isinstance(index, int) and 0 <= index < len(listed) else ""

        # Gradio finds the progress tracker as the default value of a parameter.
        def on_video(path, chosen_task, threshold, progress=gr.Progress()):  # noqa: B008
            def report(frames, total):
                progress((frames, total), desc="Segmenting frames", unit="frames")

            result = demo.segment_video(path, chosen_task, threshold, on_progress=report)
            return result.message, result.video

        gr.on(
            [image_file.change, image_task.change, image_threshold.release, image_button.click],
            on_image,
            inputs=[image_file, image_task, image_threshold],
            outputs=[image_status, picture, segments, downloads, details, selected],
            concurrency_id="model",
            concurrency_limit=1,
        )
        segments.select(on_select, inputs=[details], outputs=[selected], queue=False)
        video_button.click(
            on_video,
            inputs=[video_file, video_task, video_threshold],
            outputs=[video_status, video_output],
            concurrency_id="model",
            concurrency_limit=1,
        )
    return app.queue(default_concurrency_limit=1)


def build_argument_parser(default_config: Optional[str] = None) -> argparse.ArgumentParser:
    """The web demo's command line (``demo/app.py --help``).

    Args:
        default_config: the config named in the help as used without --config-file and
            --onnx (the quickstart's; :func:`create_web_demo` puts it in).
    """
    parser = argparse.ArgumentParser(
        description="Mask2Former web demo: a page to segment images and videos in a browser.",
        epilog="Example: python demo/app.py (after make quickstart), or python demo/app.py "
        "--config-file CONFIG --opts MODEL.WEIGHTS model_final.pth, or python demo/app.py "
        "--onnx model.onnx (tools/export_model.py)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument(
        "--max-image-size",
        type=int,
        default=DEFAULT_MAX_IMAGE_SIZE,
        metavar="PIXELS",
        help=f"larger images are downscaled to this long side (default: {DEFAULT_MAX_IMAGE_SIZE})",
    )
    parser.add_argument(
        "--max-video-frames",
        type=int,
        default=DEFAULT_MAX_VIDEO_FRAMES,
        metavar="N",
        help=f"frames of a video processed at most (default: {DEFAULT_MAX_VIDEO_FRAMES})",
    )
    parser.add_argument(
        "--examples",
        nargs="+",
        default=None,
        metavar="PATH",
        help="example images: files, globs or folders (default: a few images of the config's "
        "test data set, when they are on disk)",
    )
    add_model_arguments(parser, default_config=default_config, onnx=True)
    return parser


def _default_examples(predictor: Predictor, count: int = 4) -> List[str]:
    """The first images of the test data set's image folder, when it is on disk."""
    image_root = predictor.metadata.get("image_root", None)
    if not image_root or not os.path.isdir(image_root):
        return []
    return expand_image_inputs([image_root])[:count]


def create_web_demo(
    args: argparse.Namespace,
    *,
    quickstart_model: Optional[Tuple[str, str]] = None,
    tune_cpu_allocator: bool = False,
) -> WebDemo:
    """The web demo for parsed command-line arguments (see :func:`build_argument_parser`).

    Args:
        quickstart_model: (config, weights) that ``make quickstart`` trains: that config is
            used without --config-file and --onnx, and those weights when that config is
            given without MODEL.WEIGHTS.
        tune_cpu_allocator: passed to the :class:`~mask2former.Predictor` (``demo/app.py``
            turns it on: it owns its process).

    Raises:
        DemoError: the config, the weights, the ONNX file or an option is wrong; the message
            says what to do.
    """
    if args.max_image_size < 1 or args.max_video_frames < 1:
        raise DemoError("--max-image-size and --max-video-frames must be at least 1.")
    quickstart_config, quickstart_weights = quickstart_model or (None, "")
    onnx_file = open_onnx(args.onnx) if args.onnx else None
    if args.config_file is None and onnx_file is None:
        args = argparse.Namespace(**{**vars(args), "config_file": quickstart_config})
    cfg = load_demo_config(args, onnx_file)
    if is_video_config(cfg):
        raise DemoError(
            f"{args.config_file} is a video instance segmentation model, which the web demo "
            "does not run: use demo/demo.py --video-input FILE (or mask2former.VideoPredictor)."
        )
    if onnx_file is None and not cfg.MODEL.WEIGHTS:
        if not quickstart_config or not os.path.samefile(args.config_file, quickstart_config):
            raise DemoError(
                f"{args.config_file} names no weights (MODEL.WEIGHTS): pass a checkpoint "
                "trained with this config, with --opts MODEL.WEIGHTS PATH."
            )
        if not os.path.isfile(quickstart_weights):
            raise DemoError(
                f"no trained model at {quickstart_weights}: run `make quickstart` to train it "
                "(a few minutes on a CPU), or pass --opts MODEL.WEIGHTS PATH."
            )
        logger.info("Loading the quickstart's model, %s.", quickstart_weights)
        cfg.defrost()
        cfg.MODEL.WEIGHTS = quickstart_weights
    predictor = build_predictor(
        args,
        cfg,
        tasks=TASKS,
        score_threshold=0.0,
        tune_cpu_allocator=tune_cpu_allocator,
        onnx_file=onnx_file,
    )
    # the config's name, or the ONNX file's when its stored config is used
    config_name = os.path.splitext(os.path.basename(args.config_file or args.onnx))[0]
    weights = predictor.cfg.MODEL.WEIGHTS  # the ONNX file with --onnx
    if os.path.isfile(weights) and not os.path.relpath(weights).startswith(os.pardir):
        weights = os.path.relpath(weights)  # shorter, and no local folders shown on the page
    examples = expand_image_inputs(args.examples) if args.examples else _default_examples(predictor)
    return WebDemo(
        predictor,
        model_name=f"{config_name} ({weights})",
        max_image_size=args.max_image_size,
        max_video_frames=args.max_video_frames,
        examples=[path for path in examples if os.path.isfile(path)],
        default_task=default_task(cfg) or TASKS[0],
    )


def serve(args: argparse.Namespace, **demo_options):
    """Build the demo and the page for parsed arguments, and serve it until interrupted.

    Args:
        demo_options: for :func:`create_web_demo` (``quickstart_model``,
            ``tune_cpu_allocator``).

    Raises:
        DemoError: see :func:`create_web_demo`.
    """
    demo = create_web_demo(args, **demo_options)
    app = build_app(demo, score_threshold=args.confidence_threshold)
    app.launch(
        server_name=args.host,
        server_port=args.port,
        ssr_mode=False,
        show_error=True,
        css=PAGE_CSS,
        allowed_paths=sorted({os.path.dirname(os.path.abspath(p)) for p in demo.examples}),
    )
