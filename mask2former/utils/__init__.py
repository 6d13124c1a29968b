"""Helpers around the model: image reading, result structures, export and visualisation."""

from .image_io import ImageReadError, expand_image_inputs, read_image
from .results import InstanceResult, PanopticResult, Prediction, SemanticResult

__all__ = [
    "ImageReadError",
    "InstanceResult",
    "PanopticResult",
    "Prediction",
    "SemanticResult",
    "expand_image_inputs",
    "read_image",
]
