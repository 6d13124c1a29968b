"""Run exported models: ONNX files in ONNX Runtime, ``torch.export`` programs in PyTorch.

:class:`OnnxRuntimeMaskFormer` is a :class:`MaskFormer` whose :meth:`~MaskFormer.network`
runs an ONNX Runtime session: normalisation, padding and all post-processing (semantic,
panoptic, instance) are the PyTorch model's own code, so both backends give the same results
from the same logits. :class:`mask2former.Predictor` builds it with
``backend="onnxruntime"``.

Shape legend: N: batch, Q: queries, K: classes, H, W: padded input size.
"""

import json
import os
from typing import Dict, Optional, Tuple

import torch
from detectron2.config import CfgNode

from ..modeling.meta_arch.mask_former import MaskFormer
from .dependencies import require
from .metadata import (
    INPUT_NAME,
    MIN_BLOCKS,
    OUTPUT_NAMES,
    PROGRAM_EXTRA_FILE,
    ExportedModelError,
    ModelDescription,
)

__all__ = ["OnnxModelFile", "OnnxRuntimeMaskFormer", "load_program"]


def _check_exists(path: str, kind: str) -> None:
    if not os.path.isfile(path):
        raise ExportedModelError(
            f"{kind} file '{path}' does not exist. Export one with "
            "`python tools/export_model.py --config-file CONFIG --output PATH`."
        )


class OnnxRuntimeMaskFormer(MaskFormer):
    """A MaskFormer for inference whose network is an exported ONNX model.

    It has no backbone, head or criterion (those are in the ONNX graph); everything around
    the network is inherited. Inference only: training mode raises.
    """

    def __init__(self, session, *, source: str, exported_divisibility: int, **options):
        """
        Args:
            session: an ``onnxruntime.InferenceSession`` of an exported file.
            source: the file, named in errors.
            exported_divisibility: the network's input heights and widths must be multiples
                of it (the size divisibility it was exported with).
            options: MaskFormer's other arguments (``MaskFormer.inference_options(cfg)`` and
                ``metadata``); ``size_divisibility`` should be ``exported_divisibility`` or a
                multiple of it.
        """
        super().__init__(backbone=None, sem_seg_head=None, criterion=None, **options)
        self.session = session
        self.source = source
        self.exported_divisibility = exported_divisibility

    def network(self, images: torch.Tensor) -> Dict[str, object]:
        """(N, 3, H, W) normalised images -> "pred_logits" (N, Q, K+1), "pred_masks"
        (N, Q, H/4, W/4), no "aux_outputs".

        Raises:
            ValueError: H or W is not a multiple of the exported size divisibility.
        """
        if self.training:
            raise RuntimeError(f"{self.source}: an exported model runs inference only.")
        _check_image_size(images.shape[-2:], self.exported_divisibility, self.source)
        class_logits, mask_logits = self.session.run(
            list(OUTPUT_NAMES), {INPUT_NAME: images.detach().to("cpu", torch.float32).numpy()}
        )
        return {
            "pred_logits": torch.from_numpy(class_logits).to(images.device),
            "pred_masks": torch.from_numpy(mask_logits).to(images.device),
            "aux_outputs": [],
        }


def _check_image_size(size: Tuple[int, int], multiple: int, source: str) -> None:
    height, width = (int(side) for side in size)
    smallest = MIN_BLOCKS * multiple if multiple > 1 else 2
    if min(height, width) < smallest or (multiple > 1 and (height % multiple or width % multiple)):
        multiples = f"multiples of {multiple}, " if multiple > 1 else ""
        raise ValueError(
            f"{source} takes images whose height and width are {multiples}at least "
            f"{smallest}, got {height}x{width}: pad them (MaskFormer pads to "
            "MODEL.MASK_FORMER.SIZE_DIVISIBILITY; keep it at the exported value or a "
            "multiple of it)."
        )


class OnnxModelFile:
    """An exported ONNX file opened for inference on the CPU.

    Attributes:
        path: the file.
        session: its ``onnxruntime.InferenceSession``.
        description: the settings stored in it (config, class names, thing classes).
    """

    def __init__(self, path: str, *, threads: Optional[int] = None):
        """
        Args:
            path: an .onnx file written by ``tools/export_model.py``.
            threads: intra-op threads (None: ONNX Runtime's default, one per core).

        Raises:
            ExportedModelError: missing file, not an ONNX model, or another format version.
            MissingDependencyError: onnxruntime is not installed.
        """
        onnxruntime = require("onnxruntime", "the ONNX Runtime backend")
        _check_exists(path, "ONNX")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            session = onnxruntime.InferenceSession(
                path, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own types for unreadable files
            raise ExportedModelError(
                f"'{path}' cannot be loaded by ONNX Runtime ({error}); is it an ONNX file "
                "written by tools/export_model.py, with its .data file beside it if it has one?"
            ) from error
        strings = session.get_modelmeta().custom_metadata_map
        self.path = path
        self.session = session
        self.description = ModelDescription.from_strings(strings, f"'{path}'")

    def build_model(self, cfg: Optional[CfgNode] = None) -> OnnxRuntimeMaskFormer:
        """The model for ``cfg`` (None: the config stored in the file).

        Raises:
            ExportedModelError: ``cfg`` has another number of classes than the file.
        """
        cfg = self.description.config if cfg is None else cfg
        stored = self.description.config.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        if cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES != stored:
            raise ExportedModelError(
                f"'{self.path}' predicts {stored} classes, the config says "
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}: use the "
                "config stored in the file (leave the config out) or the one it was exported from."
            )
        options = MaskFormer.inference_options(cfg)
        if options["size_divisibility"] < 0:
            options["size_divisibility"] = self.description.size_divisibility
        return OnnxRuntimeMaskFormer(
            self.session,
            source=f"'{self.path}'",
            exported_divisibility=self.description.size_divisibility,
            metadata=self.description.model_metadata(),
            **options,
        ).eval()


def load_program(path: str) -> Tuple[torch.export.ExportedProgram, ModelDescription]:
    """Load a program written with ``--format exported-program`` and its description.

    Raises:
        ExportedModelError: missing file, not such a program, or another format version.
    """
    _check_exists(path, "Exported program")
    extra_files = {PROGRAM_EXTRA_FILE: ""}
    try:
        program = torch.export.load(path, extra_files=extra_files)
    except Exception as error:  # torch raises several types for unreadable archives
        raise ExportedModelError(
            f"'{path}' cannot be loaded with torch.export.load ({error}); is it a .pt2 file "
            "written by tools/export_model.py --format exported-program?"
        ) from error
    strings = json.loads(extra_files[PROGRAM_EXTRA_FILE] or "{}")
    return program, ModelDescription.from_strings(strings, f"'{path}'")
