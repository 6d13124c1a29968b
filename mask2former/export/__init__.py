"""Deployment: export to ONNX and ``torch.export``, and run ONNX files in ONNX Runtime.

- :func:`export` writes a model's network (normalised images in, class and mask logits out,
  dynamic batch and size) as an ONNX file or a ``torch.export`` program, with the settings
  that its pre- and post-processing need (``tools/export_model.py`` is its command line);
- :class:`OnnxModelFile` opens an exported ONNX file; ``mask2former.Predictor(path,
  backend="onnxruntime")`` runs it with the PyTorch path's own pre- and post-processing;
- :func:`load_program` reloads a ``torch.export`` program.

The ONNX parts need ``onnx``, ``onnxruntime`` and ``onnxscript`` (pinned in
requirements.txt); this package imports without them and says what to install when a
function needs them.
"""

from .dependencies import MissingDependencyError
from .exporter import (
    EXPORT_FORMATS,
    ExportError,
    ExportResult,
    InferenceNetwork,
    check_exportable,
    describe_model,
    export,
    export_onnx,
    export_program,
    trace_program,
)
from .metadata import ExportedModelError, ModelDescription
from .runtime import OnnxModelFile, OnnxRuntimeMaskFormer, load_program

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportResult",
    "ExportedModelError",
    "InferenceNetwork",
    "MissingDependencyError",
    "ModelDescription",
    "OnnxModelFile",
    "OnnxRuntimeMaskFormer",
    "check_exportable",
    "describe_model",
    "export",
    "export_onnx",
    "export_program",
    "load_program",
    "trace_program",
]
