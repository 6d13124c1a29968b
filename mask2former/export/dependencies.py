"""The optional packages of the export and of the ONNX Runtime backend."""

import importlib
from types import ModuleType

__all__ = ["MissingDependencyError", "require"]


class MissingDependencyError(ImportError):
    """An optional package that the export or the ONNX Runtime backend needs is missing."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or say what to install.

    Args:
        module: "onnx", "onnxruntime" or "onnxscript".
        purpose: what needs it, e.g. "exporting to ONNX".

    Raises:
        MissingDependencyError: the package is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{purpose} needs the '{module}' package, which is not installed. Install the "
            "export dependencies with `pip install onnx onnxruntime onnxscript` (the versions "
            "tested are pinned in requirements.txt)."
        ) from error
