"""Export a Mask2Former network with ``torch.export`` and to ONNX.

What is exported is :class:`InferenceNetwork`: the normalised, padded image batch
``images`` (N, 3, H, W) in, ``class_logits`` (N, Q, K+1) and ``mask_logits``
(N, Q, H/4, W/4) out. N, H and W are dynamic; H and W must be multiples of the size
divisibility (MODEL.MASK_FORMER.SIZE_DIVISIBILITY, resolved as the model does), which the
model's own pre-processing pads to, and at least ``MIN_BLOCKS`` of them (2). Normalisation,
padding, resizing and every post-processing step stay outside, in the code the PyTorch path runs
(:class:`~mask2former.modeling.meta_arch.mask_former.MaskFormer`), and the file carries what
they need (:mod:`mask2former.export.metadata`).

Shape legend: N: batch, Q: queries, K: classes, H, W: padded input size.
"""

import json
import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from torch import nn

from ..data.dataset_mappers.build import is_video_config
from ..modeling.meta_arch.mask_former import MaskFormer
from ..modeling.pixel_decoder.ops import MSDeformAttn, kernel_available
from .dependencies import require
from .metadata import (
    INPUT_NAME,
    MIN_BLOCKS,
    OUTPUT_NAMES,
    PROGRAM_EXTRA_FILE,
    ModelDescription,
)

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportResult",
    "InferenceNetwork",
    "describe_model",
    "export",
    "export_onnx",
    "export_program",
    "trace_program",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "exported-program")
# Example batch traced: batch 2 and unequal sides, so that no size is taken for a constant
# (torch.export specialises sizes 0 and 1, and may tie equal ones).
_EXAMPLE_BATCH = 2
_EXAMPLE_BLOCKS = (2, 3)
_EXAMPLE_SIZE_WITHOUT_DIVISIBILITY = (64, 96)


class ExportError(RuntimeError):
    """The model cannot be exported; the message names the module that blocks it."""


def check_exportable(cfg: CfgNode, config_name: str = "the config") -> None:
    """Refuse a config whose model is not exported, before anything is built.

    Args:
        config_name: how messages name the config (e.g. its file).

    Raises:
        ExportError: the config is a video model's (``VideoMaskFormer``): its frames go through
            the network together and its output is tracks, which the exported image network
            (:class:`InferenceNetwork`) does not express.
    """
    if is_video_config(cfg):
        raise ExportError(
            f"{config_name} is a video model (MODEL.META_ARCHITECTURE "
            f"{cfg.MODEL.META_ARCHITECTURE!r}), and video models are not exported: run it in "
            "PyTorch with mask2former.VideoPredictor or demo/demo.py --video-input."
        )


class InferenceNetwork(nn.Module):
    """The part of a :class:`MaskFormer` that is exported: ``images -> (class_logits,
    mask_logits)``, its :meth:`MaskFormer.network` without the auxiliary outputs."""

    def __init__(self, model: MaskFormer):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) normalised images -> (N, Q, K+1) and (N, Q, H/4, W/4) logits."""
        outputs = self.model.network(images)
        return outputs["pred_logits"], outputs["pred_masks"]


@dataclass
class ExportResult:
    """What was written.

    Attributes:
        paths: the files written (an ONNX file may have an external-data file beside it).
        inputs, outputs: (name, shape) with symbolic sizes, e.g. ("images", "(N, 3, H, W)").
        size_bytes: total size of the files.
    """

    paths: List[str]
    inputs: List[Tuple[str, str]] = field(default_factory=list)
    outputs: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(os.path.getsize(path) for path in self.paths)


def describe_model(cfg: CfgNode, model: MaskFormer) -> ModelDescription:
    """The settings that travel with an exported ``model`` built from ``cfg``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = model.size_divisibility
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    if len(cfg.DATASETS.TEST):
        dataset_metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    else:
        dataset_metadata = Metadata(name="no test data set")
    thing_map = getattr(model.metadata, "thing_dataset_id_to_contiguous_id", None)
    thing_classes = None if thing_map is None else sorted(int(v) for v in thing_map.values())
    return ModelDescription(cfg, dataset_metadata, thing_classes)


def _signature(description: ModelDescription) -> Tuple[List, List]:
    multiple = description.size_divisibility
    sides = (
        f"H, W multiples of {multiple}, at least {MIN_BLOCKS * multiple}"
        if multiple > 1
        else "any H, W of at least 2"
    )
    num_queries = description.config.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
    num_outputs = description.config.MODEL.SEM_SEG_HEAD.NUM_CLASSES + 1
    inputs = [(INPUT_NAME, f"(N, 3, H, W) float32, normalised; {sides}")]
    outputs = [
        (OUTPUT_NAMES[0], f"(N, {num_queries}, {num_outputs}) float32"),
        (OUTPUT_NAMES[1], f"(N, {num_queries}, H/4, W/4) float32"),
    ]
    return inputs, outputs


def _check_exportable(model: nn.Module) -> None:
    if not isinstance(model, MaskFormer):
        raise ExportError(
            f"MODEL.META_ARCHITECTURE builds {type(model).__name__}; only MaskFormer models "
            "can be exported."
        )
    if not kernel_available("cpu", torch.float32):
        for name, module in model.named_modules():
            if isinstance(module, MSDeformAttn):
                raise ExportError(
                    f"module {name} ({type(module).__name__}) blocks the export: it needs the "
                    "compiled multi-scale deformable attention op, a custom op that the "
                    "export keeps whole (and translates to ONNX), and it is not built. Build "
                    "it with `pip install --no-build-isolation -e .` (or `make build`)."
                )


def _frames_innermost_first(error: BaseException) -> Iterator:
    """Frames of the exception and of its causes, innermost first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        for frame, _ in reversed(list(traceback.walk_tb(error.__traceback__))):
            yield frame
        error = error.__cause__ or error.__context__


def _blocking_module(error: BaseException, network: nn.Module) -> Optional[str]:
    """The innermost module of ``network`` whose forward was running when tracing failed."""
    names = {id(module): name for name, module in network.named_modules()}
    for frame in _frames_innermost_first(error):
        module = frame.f_locals.get("self")
        if isinstance(module, nn.Module) and id(module) in names:
            name = names[id(module)].removeprefix("model.") or "model"
            return f"{name} ({type(module).__name__})"
    return None


def _dynamic_shapes(size_divisibility: int) -> Dict:
    batch = torch.export.Dim("batch", min=1)
    if size_divisibility > 1:
        height = size_divisibility * torch.export.Dim("height_blocks", min=MIN_BLOCKS)
        width = size_divisibility * torch.export.Dim("width_blocks", min=MIN_BLOCKS)
    else:
        height, width = torch.export.Dim("height", min=2), torch.export.Dim("width", min=2)
    return {INPUT_NAME: {0: batch, 2: height, 3: width}}


def _example_images(size_divisibility: int) -> torch.Tensor:
    if size_divisibility > 1:
        height, width = (blocks * size_divisibility for blocks in _EXAMPLE_BLOCKS)
    else:
        height, width = _EXAMPLE_SIZE_WITHOUT_DIVISIBILITY
    return torch.randn(_EXAMPLE_BATCH, 3, height, width, generator=torch.Generator().manual_seed(0))


def trace_program(model: MaskFormer) -> torch.export.ExportedProgram:
    """``torch.export`` the model's :class:`InferenceNetwork` with dynamic batch and size.

    The model must be a float32 CPU model in eval mode.

    Raises:
        ExportError: the model cannot be exported; names the blocking module.
    """
    _check_exportable(model)
    network = InferenceNetwork(model).eval()
    multiple = model.size_divisibility
    try:
        with torch.no_grad():
            return torch.export.export(
                network, (_example_images(multiple),), dynamic_shapes=_dynamic_shapes(multiple)
            )
    except Exception as error:  # any tracing failure: name the module, keep the cause
        blocker = _blocking_module(error, network) or "the network"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ExportError(
            f"{blocker} blocks the export with torch.export ({type(error).__name__}: "
            f"{first_line}). This module cannot be traced with a dynamic batch and image size."
        ) from error


def export_program(
    model: MaskFormer,
    description: ModelDescription,
    path: str,
    *,
    program: Optional[torch.export.ExportedProgram] = None,
) -> ExportResult:
    """Write the ``torch.export`` program (``torch.export.save``, a .pt2 file) with the
    description as extra files; reload it with :func:`mask2former.export.load_program`.

    ``program``: the model's :func:`trace_program`, to write several files from one trace;
    None traces it here.
    """
    if program is None:
        program = trace_program(model)
    strings = json.dumps(description.to_strings())
    torch.export.save(program, path, extra_files={PROGRAM_EXTRA_FILE: strings})
    inputs, outputs = _signature(description)
    return ExportResult([path], inputs, outputs)


def _rename_dims(onnx_model) -> None:
    """Readable names for the dynamic sizes of the inputs and outputs (the exporter's are
    internal symbols such as s34)."""
    import onnx_ir as ir

    image = onnx_model.graph.inputs[0]
    names = ["N", 3, "H", "W"]
    image.shape = ir.Shape(names)
    class_logits, mask_logits = onnx_model.graph.outputs
    class_logits.shape = ir.Shape(["N", class_logits.shape[1], class_logits.shape[2]])
    mask_logits.shape = ir.Shape(["N", mask_logits.shape[1], "H/4", "W/4"])


def _external_data_files(onnx, path: str) -> List[str]:
    """The external-data files an ONNX file refers to (none when its weights are inside)."""
    proto = onnx.load(path, load_external_data=False)
    folder = os.path.dirname(path)
    locations = set()
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            locations.add(os.path.join(folder, entries["location"]))
    return sorted(locations)


def export_onnx(
    model: MaskFormer,
    description: ModelDescription,
    path: str,
    *,
    external_data: Optional[bool] = None,
    program: Optional[torch.export.ExportedProgram] = None,
) -> ExportResult:
    """Write an ONNX file of the model's network, checked with ``onnx.checker``.

    The deformable attention becomes standard ONNX ops (see
    :mod:`mask2former.export.onnx_ops`); the description goes into ``metadata_props``.

    Args:
        model: a float32 CPU MaskFormer in eval mode.
        description: see :func:`describe_model`.
        path: the .onnx file.
        external_data: store the weights in a separate file (``PATH.data``); None: only when
            they exceed ONNX's 2 GB limit.
        program: the model's :func:`trace_program`, to write several files from one trace;
            None traces it here.

    Raises:
        ExportError: the model cannot be exported.
        MissingDependencyError: onnx or onnxscript is not installed.
    """
    onnx = require("onnx", "exporting to ONNX")
    require("onnxscript", "exporting to ONNX")
    from .onnx_ops import ONNX_OPSET, onnx_translations

    if program is None:
        program = trace_program(model)
    # without gradients, as traced: the exporter re-runs the graph on fake tensors, and with
    # gradients the CPU attention kernel (Swin's windows) returns another memory layout than
    # the one its views were recorded for
    with torch.no_grad():
        onnx_program = torch.onnx.export(
            program,
            custom_translation_table=onnx_translations(),
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            verbose=False,
        )
    _rename_dims(onnx_program.model)
    onnx_program.model.metadata_props.update(description.to_strings())
    onnx_program.save(path, external_data=external_data)
    onnx.checker.check_model(path)
    written = [path] + _external_data_files(onnx, path)
    inputs, outputs = _signature(description)
    return ExportResult(written, inputs, outputs)


def export(
    model: MaskFormer,
    cfg: CfgNode,
    path: str,
    export_format: str = "onnx",
    *,
    external_data: Optional[bool] = None,
) -> ExportResult:
    """Export ``model`` (built from ``cfg``, weights loaded, on the CPU) to ``path``.

    Args:
        export_format: "onnx" or "exported-program" (a ``torch.export`` .pt2 file).
        external_data: ONNX only, see :func:`export_onnx`.

    Raises:
        ExportError: the model cannot be exported (names the blocking module), or is a video
            model (:func:`check_exportable`).
        MissingDependencyError: ONNX export without onnx / onnxscript.
        ValueError: unknown format.
    """
    check_exportable(cfg)
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {EXPORT_FORMATS}, got {export_format!r}.")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("Export a model on the CPU (MODEL.DEVICE cpu).")
    model.eval()
    description = describe_model(cfg, model)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if export_format == "onnx":
        return export_onnx(model, description, path, external_data=external_data)
    return export_program(model, description, path)
