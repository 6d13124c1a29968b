"""The demo behind ``demo/demo.py``: images, videos and a webcam through a :class:`Predictor`.

For every input image the demo writes, into the output folder:

- ``NAME.EXT``: the picture of the chosen task's prediction (``--task``);
- ``NAME.panoptic.png`` + ``NAME.panoptic.json``: panoptic result (COCO panoptic format);
- ``NAME.instances.json``: instances (COCO results list, RLE masks, XYWH boxes, scores);
- ``NAME.semantic.png``: semantic label map (uint8 class indices);

the machine-readable files for every task the config switches on. A video gives a video of
pictures with the source's frame rate and size.

A video instance segmentation config (``VideoMaskFormer``, ``configs/youtubevis_*``) runs on a
whole clip at once: ``--video-input`` (a video of pictures, ``NAME.mp4``, plus
``NAME.tracks.json``) or ``--input`` frames (the images, in name order, are the frames of one
clip: a picture per frame and ``tracks.json``); tracks keep their colour through the clip.
The JSON is in the YouTube-VIS results format (:func:`mask2former.utils.export.write_tracks`).

Bad inputs do not stop a run: each one is reported (file and reason) at the end, after every
good input has been written, and the exit status is then 1.

The web demo (:mod:`mask2former.apps.web`) shares its model options, its predictor set-up and
its video loop; both write results with :func:`mask2former.utils.export.write_prediction`.
"""

import argparse
import contextlib
import gc
import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data.catalog import Metadata
from tqdm import tqdm

from ..config import UnknownConfigKeyError, add_opts_argument, load_config, merge_overrides
from ..data import is_video_config
from ..export import ExportedModelError, MissingDependencyError, OnnxModelFile
from ..predictor import PRECISIONS, Predictor, WeightsNotFoundError
from ..utils.batching import batched
from ..utils.export import write_prediction, write_tracks
from ..utils.image_io import ImageReadError, expand_image_inputs, read_image
from ..utils.results import TASK_CONFIG_KEYS, TASKS, Prediction
from ..utils.video_io import VideoReadError, iter_frames, open_video
from ..utils.visualization import (
    VideoPredictionDrawer,
    display_metadata,
    draw_prediction,
    draw_tracks,
)
from ..utils.weights_io import WeightsFileError
from ..video_predictor import VideoPredictor

__all__ = [
    "DemoError",
    "DemoReport",
    "add_model_arguments",
    "build_argument_parser",
    "build_predictor",
    "default_task",
    "load_demo_config",
    "open_onnx",
    "run_demo",
    "run_images",
    "run_video",
    "run_video_model",
    "run_webcam",
]

logger = logging.getLogger(__name__)

# Picture formats written with the input's extension; others are written as PNG.
_PICTURE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# A video model that sees more frames than this at once may run out of memory (the release's
# users report 100-150 frames for Swin-L on a 32 GB GPU): the demo suggests clips.
LONG_VIDEO_FRAMES = 100
# Video codecs by output extension (those OpenCV's bundled FFmpeg writes); web browsers play
# .webm (VP8), not OpenCV's MPEG-4 .mp4.
_VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v", ".webm": "VP80"}
DEFAULT_OUTPUT = os.path.join("output", "demo")


class DemoError(Exception):
    """A problem that stops the demo (bad config, weights, video); the message says what to do."""


@dataclass
class DemoReport:
    """What a demo run did.

    Attributes:
        written: paths of the files written.
        failures: (input, reason) for every input that could not be processed.
        notes: what a user should know about a result written (e.g. a video cut short).
    """

    written: List[str] = field(default_factory=list)
    failures: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    default_config: Optional[str] = None,
    onnx: bool = False,
) -> None:
    """The options that choose and run the model, shared by the demos (CLI and web).

    Args:
        default_config: the config used without --config-file (None: the option is required,
            unless ``onnx``). Only named in the help: with ``onnx`` the option's value stays
            None when not given, since --onnx alone means the ONNX file's stored config; the
            caller puts ``default_config`` in when neither option is given.
        onnx: add --onnx (an exported ONNX file run in ONNX Runtime, with its stored config).
    """
    if onnx:
        needed = f"default: {default_config}" if default_config else "required"
        config_help = f" ({needed} without --onnx; with it, the file's stored config)"
    else:
        config_help = f" (default: {default_config})" if default_config else ""
    parser.add_argument(
        "--config-file",
        required=default_config is None and not onnx,
        default=None if onnx else default_config,
        metavar="FILE",
        help="config YAML file" + config_help,
    )
    if onnx:
        parser.add_argument(
            "--onnx",
            metavar="FILE",
            help="run this ONNX file (tools/export_model.py) in ONNX Runtime on the CPU; its "
            "stored config is used unless --config-file is given",
        )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="instances scoring below it are dropped (default: 0.5)",
    )
    parser.add_argument(
        "--precision", choices=tuple(PRECISIONS), default="fp32", help="autocast dtype"
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: MODEL.DEVICE)")
    add_opts_argument(parser)


def build_argument_parser() -> argparse.ArgumentParser:
    """The demo's command line (``demo/demo.py --help``)."""
    parser = argparse.ArgumentParser(
        description="Mask2Former demo: segment images, a video or a webcam stream.",
        epilog="Example: python demo/demo.py --config-file configs/shapes/FILE.yaml "
        "--input datasets/shapes/images/val --output output/demo --opts MODEL.WEIGHTS "
        "output/quickstart/model_final.pth",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", nargs="+", metavar="PATH", help="image files, globs ('imgs/*.jpg') or folders"
    )
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="the first webcam")
    parser.add_argument(
        "--output",
        metavar="PATH",
        help=f"output folder, or a file for a single image or a video (default: "
        f"{DEFAULT_OUTPUT}; for --webcam: show a window)",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="what to draw (default: the first of panoptic, instance, semantic the config "
        "switches on); switched on when the config has it off",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="on a CUDA device, replay the network from CUDA graphs, one per input size "
        "(Predictor(cuda_graphs=True)): for a video, a webcam or images of one size",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        metavar="N",
        help="use only the first N frames of --video-input (a video model sees them all at "
        "once unless MODEL.MASK_FORMER.TEST.CLIP_LENGTH is set in --opts)",
    )
    add_model_arguments(parser, onnx=True)
    return parser


def default_task(cfg: CfgNode) -> Optional[str]:
    """The first of panoptic, instance, semantic that the config switches on (or None)."""
    for task in TASKS:
        if cfg.MODEL.MASK_FORMER.TEST[TASK_CONFIG_KEYS[task]]:
            return task
    return None


def open_onnx(path: str) -> OnnxModelFile:
    """The exported ONNX file of ``--onnx``.

    Raises:
        DemoError: the file is missing, unreadable or of another version, or onnxruntime is
            not installed.
    """
    try:
        return OnnxModelFile(path)
    except (ExportedModelError, MissingDependencyError) as error:
        raise DemoError(f"--onnx: {error}") from error


def load_demo_config(
    args: argparse.Namespace, onnx_file: Optional[OnnxModelFile] = None
) -> CfgNode:
    """The config named by ``args.config_file`` and ``args.opts`` (see add_model_arguments);
    without --config-file, the one stored in ``onnx_file``.

    Raises:
        DemoError: the file is missing, a key is misspelt or --opts is malformed.
    """
    if args.config_file is None and onnx_file is None:
        raise DemoError("Pass --config-file FILE (or --onnx FILE, which holds its config).")
    try:
        if args.config_file is None:
            cfg = onnx_file.description.config.clone()
            cfg.defrost()
            merge_overrides(cfg, args.opts)
            return cfg
        return load_config(args.config_file, args.opts)
    except FileNotFoundError as error:
        raise DemoError(f"{error} Pass an existing YAML file to --config-file.") from error
    except UnknownConfigKeyError as error:
        raise DemoError(str(error)) from error
    except ValueError as error:
        raise DemoError(f"{error} Give --opts as KEY VALUE pairs.") from error


class _OutputNamer:
    """Output paths for each input: one file when --output is a file, else a folder."""

    def __init__(self, output: str, single_file: bool):
        self.output = output
        self.single_file = single_file
        self._used: Dict[str, int] = {}

    def paths(self, input_name: str) -> Dict[str, str]:
        if self.single_file:
            folder = os.path.dirname(self.output) or "."
            stem, extension = os.path.splitext(os.path.basename(self.output))
            picture = self.output
        else:
            folder = self.output
            stem, extension = os.path.splitext(os.path.basename(input_name))
            count = self._used.get(stem, 0)
            self._used[stem] = count + 1
            stem = stem if count == 0 else f"{stem}_{count}"
            if extension.lower() not in _PICTURE_EXTENSIONS:
                extension = ".png"
            picture = os.path.join(folder, stem + extension)
        os.makedirs(folder, exist_ok=True)
        return {"picture": picture, "folder": folder, "stem": stem}


def _is_file_output(output: str, num_inputs: int, extensions) -> bool:
    if os.path.isdir(output):
        return False
    if os.path.splitext(output)[1].lower() not in extensions:
        return False
    if num_inputs > 1:
        raise DemoError(
            f"--output {output} is a file, but there are {num_inputs} inputs; give a folder."
        )
    return True


def _write_image_results(
    image_rgb: np.ndarray,
    prediction: Prediction,
    paths: Dict[str, str],
    *,
    task: str,
    shown: Metadata,
    dataset_metadata: Metadata,
) -> List[str]:
    """Write the picture (``shown``: see display_metadata) and every result; return the paths."""
    picture = draw_prediction(image_rgb, prediction, task, shown)
    if not cv2.imwrite(paths["picture"], picture[:, :, ::-1]):
        raise OSError(f"could not write {paths['picture']}; check that the folder is writable")
    results = write_prediction(
        prediction, paths["folder"], paths["stem"], metadata=dataset_metadata
    )
    return [paths["picture"]] + results


def run_images(
    predictor: Predictor,
    patterns: Sequence[str],
    output: str,
    task: str,
    *,
    batch_size: int = 1,
    progress: bool = True,
) -> DemoReport:
    """Predict on image files and write pictures and results; bad inputs are collected.

    Args:
        predictor: a :class:`mask2former.Predictor`.
        patterns: files, globs or folders (see :func:`expand_image_inputs`).
        output: a folder, or a file name (with an image extension) for a single input.
        task: the task drawn in the pictures.
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        The files written and the inputs that failed.
    """
    report = DemoReport()
    files = expand_image_inputs(patterns)
    namer = _OutputNamer(output, _is_file_output(output, len(files), _PICTURE_EXTENSIONS))
    shown = display_metadata(predictor.metadata, len(predictor.class_names))
    bar = tqdm(total=len(files), unit="image", disable=not progress)
    for batch in batched(files, batch_size):
        names, images = [], []
        for name in batch:
            try:
                images.append(predictor.read(name))
                names.append(name)
            except ImageReadError as error:
                report.failures.append((name, str(error)))
        for name, image, prediction in zip(names, images, predictor.predict_arrays(images)):
            rgb = image if predictor.input_format == "RGB" else image[:, :, ::-1]
            try:
                report.written += _write_image_results(
                    rgb,
                    prediction,
                    namer.paths(name),
                    task=task,
                    shown=shown,
                    dataset_metadata=predictor.metadata,
                )
            except OSError as error:
                report.failures.append((name, str(error)))
        bar.update(len(batch))
    bar.close()
    return report


def _open_video(path: str) -> cv2.VideoCapture:
    try:
        return open_video(path)
    except VideoReadError as error:
        raise DemoError(f"{error} Check the file given to --video-input.") from error


def _video_writer(path: str, fps: float, size: Tuple[int, int]) -> cv2.VideoWriter:
    extension = os.path.splitext(path)[1].lower()
    if extension not in _VIDEO_CODECS:
        raise DemoError(
            f"--output {path}: unsupported video extension; use one of {sorted(_VIDEO_CODECS)}."
        )
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*_VIDEO_CODECS[extension]), fps, size)
    if not writer.isOpened():
        raise DemoError(f"{path}: cannot write a video there; check the folder is writable.")
    return writer


@contextlib.contextmanager
def _frame_garbage_collection() -> Iterator[Callable[[], None]]:
    """A function to call after each frame (or batch) that frees its pictures' memory.

    Detectron2's visualizers draw every frame on a new matplotlib figure, which is a
    reference cycle: without a full garbage collection, each one (a few copies of the frame,
    15 MB at 720p) stays in memory, and Python runs full collections rarely once torch is
    loaded, so a video's memory would grow by gigabytes between them. A full collection is
    slow (~0.2 s) with the model's objects to scan, so they are frozen (excluded) while the
    frames are processed, which makes each collection take a few milliseconds.
    """
    gc.freeze()
    try:
        yield gc.collect
    finally:
        gc.unfreeze()


def _draw_frames(
    predictor: Predictor,
    frames_bgr: Sequence[np.ndarray],
    drawer,
    score_threshold: Optional[float] = None,
) -> List[np.ndarray]:
    """BGR frames -> BGR pictures; ``score_threshold`` filters instances further."""
    images = [
        read_image(frame, predictor.input_format, array_channel_order="BGR") for frame in frames_bgr
    ]
    pictures = []
    for image, prediction in zip(images, predictor.predict_arrays(images)):
        if score_threshold is not None:
            prediction = prediction.with_instance_threshold(score_threshold)
        rgb = image if predictor.input_format == "RGB" else image[:, :, ::-1]
        picture = drawer.draw(rgb, prediction)[:, :, ::-1]
        if picture.shape[:2] != rgb.shape[:2]:
            picture = cv2.resize(picture, (rgb.shape[1], rgb.shape[0]))
        pictures.append(np.ascontiguousarray(picture))
    return pictures


def run_video(
    predictor: Predictor,
    video_path: str,
    output: str,
    task: str,
    *,
    batch_size: int = 1,
    progress: bool = True,
    max_frames: Optional[int] = None,
    on_progress: Optional[Callable[[int, Optional[int]], None]] = None,
    score_threshold: Optional[float] = None,
) -> DemoReport:
    """Predict on every frame of a video and write a video of pictures.

    Frames are read, predicted and written ``batch_size`` at a time, so memory does not grow
    with the video's length. The output has the source's frame rate and frame size.

    Args:
        output: a video file (.mp4, .avi, .webm, ...) or a folder (then ``FOLDER/NAME.mp4``).
        max_frames: stop after this many frames (a note in the report says so).
        on_progress: called after each batch with (frames done, frames to do or None).
        score_threshold: drop instances scoring below it (on top of the predictor's).

    Raises:
        DemoError: the video cannot be opened or the output cannot be written.
    """
    capture = _open_video(video_path)
    try:
        fps = _frame_rate(capture.get(cv2.CAP_PROP_FPS), video_path)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        to_do = total  # frames to process, when known
        if max_frames is not None:
            to_do = max_frames if total is None else min(total, max_frames)
        if os.path.splitext(output)[1].lower() not in _VIDEO_CODECS or os.path.isdir(output):
            stem = os.path.splitext(os.path.basename(video_path))[0]
            output = os.path.join(output, stem + ".mp4")
        writer = _video_writer(output, fps, (width, height))
        drawer = VideoPredictionDrawer(
            display_metadata(predictor.metadata, len(predictor.class_names)), task
        )
        num_frames = 0
        try:
            with tqdm(total=to_do, unit="frame", disable=not progress) as bar:
                with _frame_garbage_collection() as collect:
                    frames = itertools.islice(iter_frames(capture), max_frames)
                    for batch in batched(frames, batch_size):
                        for picture in _draw_frames(predictor, batch, drawer, score_threshold):
                            writer.write(picture)
                        num_frames += len(batch)
                        bar.update(len(batch))
                        collect()
                        if on_progress is not None:
                            on_progress(num_frames, to_do)
        finally:
            writer.release()
        cut_short = max_frames is not None and num_frames == max_frames and capture.grab()
    finally:
        capture.release()
    report = DemoReport(written=[output])
    if num_frames == 0:
        report.failures.append(
            (video_path, "no frame could be decoded; the video is empty or corrupt")
        )
    if cut_short:
        of_total = f" of its {total}" if total else ""
        report.notes.append(
            f"{video_path}: only the first {max_frames}{of_total} frames were processed "
            "(the frame cap)."
        )
    return report


def _warn_if_long(predictor: VideoPredictor, video_path: str, max_frames: Optional[int]) -> None:
    """Warn before a video model sees more than LONG_VIDEO_FRAMES frames at once."""
    if predictor.cfg.MODEL.MASK_FORMER.TEST.CLIP_LENGTH > 0:
        return
    capture = _open_video(video_path)
    try:
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    if max_frames is not None:
        frames = min(frames, max_frames)
    if frames > LONG_VIDEO_FRAMES:
        logger.warning(
            "%s: the video model sees its %d frames at once, and its memory grows with every "
            "frame; if it runs out, add MODEL.MASK_FORMER.TEST.CLIP_LENGTH 36 to --opts (clips "
            "of 36 frames linked into tracks) or cut the video with --max-frames.",
            video_path,
            frames,
        )


def _frame_rate(fps: float, video_path: str) -> float:
    """The frame rate to write a video read from ``video_path`` with: its own, else 30."""
    if not fps or fps <= 0 or not np.isfinite(fps):
        logger.warning("%s does not say its frame rate: writing 30 fps.", video_path)
        fps = 30.0
    return fps


def run_video_model(
    predictor: VideoPredictor,
    output: str,
    *,
    video_path: Optional[str] = None,
    frame_patterns: Sequence[str] = (),
    max_frames: Optional[int] = None,
) -> DemoReport:
    """Run a video model on one clip and write its tracks: pictures and ``tracks.json``.

    Args:
        predictor: a :class:`mask2former.VideoPredictor`.
        output: for ``video_path``: a video file, or a folder (then ``FOLDER/NAME.mp4``); the
            JSON goes beside it as ``NAME.tracks.json``. For frames: a folder, which gets a
            picture per frame and ``tracks.json``.
        video_path: a video file, or None to read ``frame_patterns``.
        frame_patterns: image files, globs or folders: the frames of the clip, in name order.
            An unreadable frame is reported and left out of the clip.
        max_frames: use only the first frames.

    Raises:
        DemoError: the video cannot be opened or the output cannot be written.
    """
    report = DemoReport()
    shown = display_metadata(predictor.metadata, len(predictor.class_names))
    if video_path is not None:
        _warn_if_long(predictor, video_path, max_frames)
        # Read twice, the model's pass and the drawing pass, keeping no picture.
        try:
            prediction = predictor(video_path, max_frames)
        except VideoReadError as error:
            raise DemoError(f"{error} Check the file given to --video-input.") from error
        stem = os.path.splitext(os.path.basename(video_path))[0]
        if os.path.splitext(output)[1].lower() not in _VIDEO_CODECS or os.path.isdir(output):
            output = os.path.join(output, stem + ".mp4")
        capture = _open_video(video_path)
        try:
            fps = _frame_rate(capture.get(cv2.CAP_PROP_FPS), video_path)
            height, width = prediction.frame_size
            writer = _video_writer(output, fps, (width, height))
            try:
                frames = itertools.islice(iter_frames(capture), prediction.num_frames)
                with _frame_garbage_collection() as collect:
                    for index, frame in enumerate(frames):
                        picture = draw_tracks(frame[:, :, ::-1], prediction.frame(index), shown)
                        writer.write(np.ascontiguousarray(picture[:, :, ::-1]))
                        collect()
            finally:
                writer.release()
            if max_frames is not None and prediction.num_frames == max_frames and capture.grab():
                report.notes.append(f"{video_path}: only the first {max_frames} frames were used.")
        finally:
            capture.release()
        json_path = os.path.splitext(output)[0] + ".tracks.json"
        report.written.append(output)
        names = [video_path]
    else:
        names, frames = [], []
        for name in expand_image_inputs(frame_patterns)[:max_frames]:
            try:
                frames.append(predictor.read(name))
                names.append(name)
            except ImageReadError as error:
                report.failures.append((name, f"{error} (left out of the clip)"))
        if not frames:
            return report
        prediction = predictor.predict_arrays(frames)
        namer = _OutputNamer(output, single_file=False)
        with _frame_garbage_collection() as collect:
            for index, (name, frame) in enumerate(zip(names, frames)):
                rgb = frame if predictor.input_format == "RGB" else frame[:, :, ::-1]
                picture = draw_tracks(rgb, prediction.frame(index), shown)[:, :, ::-1]
                path = namer.paths(name)["picture"]
                if not cv2.imwrite(path, np.ascontiguousarray(picture)):
                    raise DemoError(f"could not write {path}; check that the folder is writable")
                report.written.append(path)
                collect()
        json_path = os.path.join(output, "tracks.json")
    write_tracks(
        prediction, json_path, video_id=os.path.basename(names[0]), metadata=predictor.metadata
    )
    report.written.append(json_path)
    return report


def run_webcam(predictor: Predictor, output: Optional[str], task: str) -> DemoReport:
    """Predict on the first webcam until Esc (window) or Ctrl-C; record to ``output`` if given.

    Raises:
        DemoError: no webcam, or no window can be shown and no ``output`` was given.
    """
    capture = cv2.VideoCapture(0)
    if not capture.isOpened():
        raise DemoError("cannot open webcam 0; check that a camera is connected and free.")
    drawer = VideoPredictionDrawer(
        display_metadata(predictor.metadata, len(predictor.class_names)), task
    )
    writer = None
    window_shown = False  # headless OpenCV builds raise on any window call, close included
    report = DemoReport()
    try:
        with _frame_garbage_collection() as collect:
            for frame in iter_frames(capture):
                picture = _draw_frames(predictor, [frame], drawer)[0]
                collect()
                if output is not None:
                    if writer is None:
                        size = (picture.shape[1], picture.shape[0])
                        writer = _video_writer(output, capture.get(cv2.CAP_PROP_FPS) or 30.0, size)
                        report.written.append(output)
                    writer.write(picture)
                    continue
                try:
                    cv2.imshow("Mask2Former", picture)
                    window_shown = True
                except cv2.error as error:
                    raise DemoError(
                        "this OpenCV build cannot show windows (opencv-python-headless); pass "
                        "--output FILE.mp4 to record the stream instead."
                    ) from error
                if cv2.waitKey(1) == 27:
                    break
    except KeyboardInterrupt:
        logger.info("Stopped.")
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if window_shown:
            cv2.destroyAllWindows()
    return report


def _check_cuda_graphs(args, cfg: CfgNode, onnx_file: Optional[OnnxModelFile]) -> None:
    """DemoError unless --cuda-graphs can run: an image model in PyTorch on a CUDA device."""
    if onnx_file is not None or is_video_config(cfg):
        model = "an ONNX file" if onnx_file is not None else "a video model"
        raise DemoError(f"--cuda-graphs replays an image model on a GPU, not {model}.")
    device = torch.device(args.device or cfg.MODEL.DEVICE)
    if device.type != "cuda" or not torch.cuda.is_available():
        found = "CUDA is not available" if device.type == "cuda" else f"the device is {device}"
        raise DemoError(
            f"--cuda-graphs replays the model on a GPU, and {found}: run with --device cuda on "
            "a machine with CUDA, or without --cuda-graphs."
        )


def build_predictor(
    args: argparse.Namespace,
    cfg: CfgNode,
    *,
    tasks: Sequence[str],
    score_threshold: float,
    tune_cpu_allocator: bool = False,
    onnx_file: Optional[OnnxModelFile] = None,
) -> Predictor:
    """The demos' predictor for the options of :func:`add_model_arguments`; with
    ``onnx_file``, one that runs it in ONNX Runtime.

    Raises:
        DemoError: the weights file is missing or refused, or the ONNX file does not fit.
    """
    cuda_graphs = getattr(args, "cuda_graphs", False)
    if cuda_graphs:
        _check_cuda_graphs(args, cfg, onnx_file)
    try:
        if is_video_config(cfg):
            if onnx_file is not None:
                raise DemoError("--onnx: video models are not exported; run the PyTorch model.")
            return VideoPredictor(
                cfg,
                device=args.device,
                precision=args.precision,
                score_threshold=score_threshold,
                tune_cpu_allocator=tune_cpu_allocator,
            )
        return Predictor(
            cfg,
            onnx_file,
            backend="pytorch" if onnx_file is None else "onnxruntime",
            device=args.device,
            precision=args.precision,
            tasks=tasks,
            score_threshold=score_threshold,
            tune_cpu_allocator=tune_cpu_allocator,
            cuda_graphs=cuda_graphs,
        )
    except WeightsNotFoundError as error:
        raise DemoError(f"{error} (set with --opts MODEL.WEIGHTS PATH)") from error
    except WeightsFileError as error:
        raise DemoError(str(error)) from error
    except (ExportedModelError, ValueError) as error:
        if onnx_file is None:
            raise
        raise DemoError(f"--onnx: {error}") from error


def run_demo(
    args: argparse.Namespace, *, progress: bool = True, tune_cpu_allocator: bool = False
) -> DemoReport:
    """Run the demo for parsed command-line arguments (see :func:`build_argument_parser`).

    Args:
        args: the parsed command line.
        progress: show progress bars.
        tune_cpu_allocator: passed to the :class:`Predictor` (``demo/demo.py`` turns it on).

    Raises:
        DemoError: a problem that stops the whole run (config, weights, video, output).
    """
    if args.batch_size < 1:
        raise DemoError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.max_frames is not None and args.max_frames < 1:
        raise DemoError(f"--max-frames must be at least 1, got {args.max_frames}.")
    onnx_file = open_onnx(args.onnx) if args.onnx else None
    cfg = load_demo_config(args, onnx_file)
    if is_video_config(cfg):
        return _run_video_model_demo(args, cfg, tune_cpu_allocator)
    task = args.task or default_task(cfg)
    if task is None:
        raise DemoError(
            f"{args.config_file or args.onnx} switches every task off; pass --task "
            "panoptic|instance|semantic."
        )
    if args.video_input:
        _open_video(args.video_input).release()  # fail before building the model
    switches = cfg.MODEL.MASK_FORMER.TEST
    tasks = [name for name in TASKS if name == task or switches[TASK_CONFIG_KEYS[name]]]
    predictor = build_predictor(
        args,
        cfg,
        tasks=tasks,
        score_threshold=args.confidence_threshold,
        tune_cpu_allocator=tune_cpu_allocator,
        onnx_file=onnx_file,
    )
    if args.webcam:
        return run_webcam(predictor, args.output, task)
    output = args.output or DEFAULT_OUTPUT
    if args.video_input:
        return run_video(
            predictor,
            args.video_input,
            output,
            task,
            batch_size=args.batch_size,
            progress=progress,
            max_frames=args.max_frames,
        )
    return run_images(
        predictor, args.input, output, task, batch_size=args.batch_size, progress=progress
    )


def _run_video_model_demo(
    args: argparse.Namespace, cfg: CfgNode, tune_cpu_allocator: bool
) -> DemoReport:
    """The demo of a video model: one clip, from --video-input or the --input frames."""
    if args.webcam:
        raise DemoError(
            f"{args.config_file} is a video model, which needs a whole clip at once: record "
            "the webcam and pass the file to --video-input."
        )
    if args.task not in (None, "instance"):
        raise DemoError(f"{args.config_file} is a video instance segmentation model: no --task.")
    if args.video_input:
        _open_video(args.video_input).release()  # fail before building the model
    predictor = build_predictor(
        args,
        cfg,
        tasks=["instance"],
        score_threshold=args.confidence_threshold,
        tune_cpu_allocator=tune_cpu_allocator,
    )
    return run_video_model(
        predictor,
        args.output or DEFAULT_OUTPUT,
        video_path=args.video_input,
        frame_patterns=args.input or (),
        max_frames=args.max_frames,
    )
