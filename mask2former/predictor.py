"""Python API: run a Mask2Former model on images.

Example::

    from mask2former import Predictor

    predictor = Predictor("configs/shapes/maskformer2_R18_panoptic.yaml", "model_final.pth")
    prediction = predictor("image.jpg")           # one image -> Prediction
    predictions = predictor([array, pil_image])   # a list -> list of Prediction
    for segment in prediction.panoptic.segments:
        print(segment["category_name"], segment["area"])

Shapes: H, W: the size of an input image (results come back at this size); K: classes.
"""

import logging
import os
from contextlib import nullcontext
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model

from . import data as _data  # noqa: F401  only registration (data set metadata)
from . import modeling as _modeling  # noqa: F401  only registration (model parts)
from .config import load_config
from .engine.checkpoint import AtomicDetectionCheckpointer
from .interop.huggingface import load_hf_folder
from .utils.batching import batched
from .utils.class_names import class_names_from_metadata
from .utils.cpu_memory import keep_freed_memory
from .utils.device import runnable_device
from .utils.host_syncs import to_device
from .utils.image_io import ImageSource, read_image
from .utils.results import TASK_CONFIG_KEYS, TASKS, Prediction, prediction_from_model_output

__all__ = ["Predictor", "WeightsNotFoundError", "BACKENDS", "PRECISIONS", "precision_autocast"]

logger = logging.getLogger(__name__)

# Predictor(precision=...) -> the autocast dtype (None: float32, no autocast).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_autocast(precision: str, device_type: str):
    """The context a forward in ``precision`` (a key of ``PRECISIONS``) runs under on
    ``device_type`` ("cpu", "cuda"): autocast to its dtype, or nothing for "fp32"."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


# "onnxruntime" runs an ONNX file written by tools/export_model.py (mask2former.export).
BACKENDS = ("pytorch", "onnxruntime")
_REMOTE_PREFIXES = ("http://", "https://", "detectron2://", "catalog://", "manifold://")


class WeightsNotFoundError(FileNotFoundError):
    """The weights file given to the predictor does not exist."""


def _check_weights(weights: str) -> None:
    if not weights or weights.startswith(_REMOTE_PREFIXES) or os.path.isfile(weights):
        return
    raise WeightsNotFoundError(
        f"Weights file '{weights}' does not exist. Pass the path of a trained checkpoint "
        "(e.g. output/.../model_final.pth or an official model-zoo .pkl), or set "
        "MODEL.WEIGHTS to '' to run a randomly initialised model."
    )


def _resolve_device(requested: Optional[str], configured: str) -> torch.device:
    if requested is None:
        return runnable_device(configured)
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={requested!r} was asked for, but CUDA is not available.")
    return device


def _metadata(cfg: CfgNode) -> Metadata:
    if len(cfg.DATASETS.TEST):
        return MetadataCatalog.get(cfg.DATASETS.TEST[0])
    return Metadata(name="no test data set")


def _open_onnx(cfg_or_path, weights, precision: str, device: Optional[str]):
    """The ONNX file of backend="onnxruntime", and the config to use (the file's when
    ``cfg_or_path`` is the file itself)."""
    from .export import OnnxModelFile  # onnxruntime is optional: imported when asked for

    if precision != "fp32":
        raise ValueError(f"The onnxruntime backend runs the exported fp32 model, not {precision}.")
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"The onnxruntime backend runs on the CPU, not {device!r}.")
    is_onnx_path = not isinstance(cfg_or_path, CfgNode) and os.fspath(cfg_or_path).endswith(".onnx")
    if isinstance(weights, OnnxModelFile):
        onnx_file = weights
    elif weights is None:
        if not is_onnx_path:
            raise ValueError(
                "backend='onnxruntime' needs the .onnx file: pass it as weights or in place of "
                "the config."
            )
        onnx_file = OnnxModelFile(os.fspath(cfg_or_path))
    else:
        onnx_file = OnnxModelFile(weights)
    if is_onnx_path:
        cfg_or_path = onnx_file.description.config
    return onnx_file, cfg_or_path


class Predictor:
    """Builds a Mask2Former model from a config, loads its weights and predicts on images.

    Images are read into INPUT.FORMAT, resized so that the short side is INPUT.MIN_SIZE_TEST
    (the long side at most INPUT.MAX_SIZE_TEST), run in batches on the model's device, and
    the results come back at each image's own size.

    Attributes:
        cfg: the frozen config the model was built from.
        model: the model, in eval mode.
        metadata: metadata of the first test data set (class names and colours).
        class_names: names of the model's K classes.
        device: where the model runs.
        backend: "pytorch" or "onnxruntime".
    """

    def __init__(
        self,
        cfg_or_path: Union[CfgNode, str, os.PathLike],
        weights: Optional[str] = None,
        *,
        backend: str = "pytorch",
        device: Optional[str] = None,
        precision: str = "fp32",
        opts: Optional[Sequence[str]] = None,
        tasks: Optional[Sequence[str]] = None,
        score_threshold: float = 0.0,
        return_probabilities: bool = False,
        array_channel_order: str = "RGB",
        state_dict: Optional[Mapping[str, torch.Tensor]] = None,
        tune_cpu_allocator: bool = False,
        cuda_graphs: bool = False,
    ):
        """
        Args:
            cfg_or_path: a config (with the Mask2Former keys) or the path of a YAML file.
            weights: checkpoint to load; None uses MODEL.WEIGHTS, "" keeps the random
                initialisation. With backend="onnxruntime": the .onnx file or an opened
                :class:`mask2former.export.OnnxModelFile` (None: ``cfg_or_path``, which may
                then be the .onnx file: its stored config is used).
            backend: "pytorch", or "onnxruntime" to run an exported ONNX file on the CPU
                with the same pre- and post-processing (fp32 only).
            device: "cpu", "cuda", "cuda:1", ...; None uses MODEL.DEVICE (the CPU when
                CUDA is not available).
            precision: "fp32", or "bf16" / "fp16" to run under autocast.
            opts: config overrides ``["KEY", "VALUE", ...]``.
            tasks: outputs to compute among "panoptic", "instance", "semantic"; None keeps
                the config's MODEL.MASK_FORMER.TEST.*_ON switches.
            score_threshold: instances scoring below it are dropped.
            return_probabilities: keep the (K, H, W) semantic scores in the results.
            array_channel_order: channel order of numpy array inputs, "RGB" (PIL, imageio,
                matplotlib) or "BGR" (OpenCV).
            state_dict: weights already in memory (our parameter names), loaded strictly
                instead of a checkpoint file; ``weights`` then only records their origin.
            tune_cpu_allocator: on a CPU, make glibc keep freed memory for reuse
                (:func:`mask2former.utils.cpu_memory.keep_freed_memory`): faster inference
                (see BENCHMARKS.md), but it changes the allocator of the whole process, which
                then keeps its peak memory. Off by default, so that a predictor built inside
                another application leaves its memory behaviour alone; the demo turns it on.
            cuda_graphs: on a CUDA device, replay the network from CUDA graphs, one per
                input size (:meth:`MaskFormer.use_cuda_graphs`): the host launches one graph
                instead of over a thousand kernels per image. The first image of each padded
                size captures its graph (a few forwards' time), so it suits inputs of few
                sizes (video, cameras, images of one size). The model is prepared for it:
                frozen batch norms folded into their convolutions and, with "bf16" / "fp16",
                the convolution, linear and attention weights stored in that dtype (the same
                outputs up to float rounding).

        Raises:
            FileNotFoundError: the config file is missing.
            mask2former.config.UnknownConfigKeyError: a config key or override is misspelt.
            WeightsNotFoundError: the weights file is missing.
            mask2former.utils.weights_io.WeightsFileError: the weights file is empty,
                truncated or of an unknown format, or (``UnsafeWeightsError``) asks to run
                code; nothing from it is run.
            mask2former.export.ExportedModelError: a missing, unreadable or other-version
                ONNX file (backend="onnxruntime").
            ValueError: unknown precision, task or backend; cuda_graphs off a CUDA device or
                with backend="onnxruntime".
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}.")
        onnx_file = None
        if backend == "onnxruntime":
            onnx_file, cfg_or_path = _open_onnx(cfg_or_path, weights, precision, device)
            weights = onnx_file.path
        elif backend != "pytorch":
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        cfg = self._build_config(cfg_or_path, opts, tasks)
        weights = cfg.MODEL.WEIGHTS if weights is None else weights
        if state_dict is None and onnx_file is None:
            _check_weights(weights)
        # ONNX Runtime runs on the CPU whatever MODEL.DEVICE says (_open_onnx refuses others)
        self.device = _resolve_device(device, "cpu" if onnx_file else cfg.MODEL.DEVICE)
        if tune_cpu_allocator and self.device.type == "cpu":
            keep_freed_memory()
        if cuda_graphs and (self.device.type != "cuda" or onnx_file is not None):
            raise ValueError(
                "cuda_graphs=True replays the PyTorch model on a CUDA device; this predictor "
                f"runs {backend} on {self.device}. Leave cuda_graphs off, or pass device='cuda'."
            )
        cfg.MODEL.DEVICE = str(self.device)
        cfg.MODEL.WEIGHTS = weights
        cfg.freeze()
        self.cfg = cfg

        if onnx_file is not None:
            self.model = onnx_file.build_model(cfg)
            self.metadata = onnx_file.description.dataset_metadata
        else:
            self.model = build_model(cfg)
            self.model.eval()
            if state_dict is not None:
                self.model.load_state_dict(state_dict)  # strict: names missing/unexpected keys
            elif weights:
                AtomicDetectionCheckpointer(
                    self.model, use_average=cfg.MODEL_EMA.USE_FOR_INFERENCE
                ).load(weights)
            else:
                logger.warning("No weights given: the model is randomly initialised.")
            self.metadata = _metadata(cfg)
            if cuda_graphs:
                self.model.use_cuda_graphs(PRECISIONS[precision])
        self.class_names = class_names_from_metadata(
            self.metadata, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        )
        self.input_format = cfg.INPUT.FORMAT
        self.resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.precision = precision
        self.backend = backend
        self.score_threshold = score_threshold
        self.return_probabilities = return_probabilities
        self.array_channel_order = array_channel_order

    @classmethod
    def from_hf(
        cls,
        path: Union[str, os.PathLike],
        *,
        task: Optional[str] = None,
        stuff_classes: Optional[Sequence[Union[int, str]]] = None,
        **kwargs,
    ) -> "Predictor":
        """A predictor for a Hugging Face transformers Mask2Former folder (Swin backbone).

        The folder is what ``save_pretrained`` writes or a downloaded Hub repository
        (config.json + safetensors); nothing is downloaded. Its config becomes ours and its
        id2label the metadata (class names; stuff classes from ``label_ids_to_fuse``).

        Args:
            path: the folder.
            task: "panoptic" (all outputs), "instance" or "semantic"; None: the one the
                folder name announces, else "panoptic".
            stuff_classes: ids or names of the classes panoptic inference merges (None: those
                the folder stores, else none).
            **kwargs: the other arguments of :class:`Predictor` (device, precision, opts,
                tasks, ...).

        Raises:
            FileNotFoundError: the folder, its config.json or its safetensors are missing.
            ImportError: safetensors is not installed.
            ValueError: a setting or parameter that has no equivalent here (named).
        """
        converted = load_hf_folder(path, task=task, stuff_classes=stuff_classes)
        return cls(converted.cfg, os.fspath(path), state_dict=converted.state_dict, **kwargs)

    @staticmethod
    def _build_config(cfg_or_path, opts, tasks) -> CfgNode:
        if isinstance(cfg_or_path, CfgNode):
            cfg = cfg_or_path.clone()
            cfg.defrost()
            if opts:
                cfg.merge_from_list(list(opts))
        else:
            cfg = load_config(os.fspath(cfg_or_path), opts)
        if tasks is not None:
            unknown = sorted(set(tasks) - set(TASKS))
            if unknown or not tasks:
                raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}.")
            for task, key in TASK_CONFIG_KEYS.items():
                cfg.MODEL.MASK_FORMER.TEST[key] = task in tasks
        return cfg

    def read(self, image: ImageSource) -> np.ndarray:
        """Read one image (path, numpy array or PIL image) into (H, W, 3) uint8 INPUT.FORMAT.

        Raises:
            mask2former.utils.ImageReadError: the image cannot be read.
        """
        return read_image(image, self.input_format, array_channel_order=self.array_channel_order)

    @torch.no_grad()
    def predict_arrays(self, images: Sequence[np.ndarray]) -> List[Prediction]:
        """Run the model on images already read by :meth:`read`, as one batch.

        Args:
            images: (H, W, 3) uint8 arrays in INPUT.FORMAT.

        Returns:
            One :class:`Prediction` per image, at the image's size.
        """
        inputs = []
        for image in images:
            height, width = image.shape[:2]
            resized = self.resize.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
            # copied as uint8 (a quarter of the bytes of float32), without waiting for the device
            image_on_device = to_device(tensor, self.device).to(torch.float32)
            inputs.append({"image": image_on_device, "height": height, "width": width})
        if not inputs:
            return []
        with precision_autocast(self.precision, self.device.type):
            outputs = self.model(inputs)
        return [
            prediction_from_model_output(
                output,
                image.shape[:2],
                class_names=self.class_names,
                score_threshold=self.score_threshold,
                keep_probabilities=self.return_probabilities,
            )
            for output, image in zip(outputs, images)
        ]

    def __call__(
        self, image_or_batch: Union[ImageSource, Sequence[ImageSource]]
    ) -> Union[Prediction, List[Prediction]]:
        """Predict on one image or a list of images, run as one batch.

        Args:
            image_or_batch: a path, an (H, W[, C]) numpy array, a PIL image, or a list or
                tuple of them.

        Returns:
            A :class:`~mask2former.utils.results.Prediction` for one image, a list of them
            for a list.

        Raises:
            mask2former.utils.ImageReadError: an image cannot be read (nothing is run).
        """
        if isinstance(image_or_batch, (list, tuple)):
            return self.predict_arrays([self.read(image) for image in image_or_batch])
        return self.predict_arrays([self.read(image_or_batch)])[0]

    def predict_batch(
        self, images: Iterable[ImageSource], batch_size: int = 1
    ) -> Iterator[Prediction]:
        """Predict on many images, ``batch_size`` at a time, yielding results in order.

        Only one batch of images is held in memory at a time, so ``images`` may be a long
        generator (e.g. video frames).

        Raises:
            mask2former.utils.ImageReadError: an image cannot be read.
        """
        for batch in batched((self.read(image) for image in images), batch_size):
            yield from self.predict_arrays(batch)
