"""Reading and writing weights files without ever running code from them.

Every weights file this project reads goes through :func:`load_weights_file` (the checkpointer,
the :class:`~mask2former.Predictor`, the demo, ``train_net.py`` and the converters in
``tools/``). The format is chosen by the file's extension:

- ``.pkl``: Detectron2 / official model-zoo pickles, ``{"model": {name: numpy array},
  "__author__": ..., "matching_heuristics": ...}``, and Caffe2 / Detectron1 ones. Python's
  pickle runs whatever function a file names, so these are read by a restricted unpickler that
  only rebuilds what such files hold: dicts, lists, tuples, strings, numbers, ``None`` and
  numpy arrays, scalars and dtypes (through numpy's few reconstruction functions). Any other
  global stops the load before it is called, with :class:`UnsafeWeightsError`.
- ``.pth`` / ``.pt``: ``torch.save`` files, read with ``torch.load(weights_only=True)``, which
  allows tensors and plain containers; numpy arrays are allowed as in ``.pkl`` files. Training
  checkpoints (model, optimizer, scheduler, iteration) need nothing more.
- ``.safetensors``: tensors plus string metadata; no code at all.

A file that is missing, empty, truncated or of an unknown format raises an error whose message
names it (:class:`WeightsFileError`, a ``ValueError``; ``FileNotFoundError`` when missing).
"""

import collections
import logging
import os
import pickle
import re
import types
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from .atomic_io import atomic_open

__all__ = [
    "EMA_CHECKPOINT_KEY",
    "WEIGHTS_EXTENSIONS",
    "UnsafeWeightsError",
    "WeightsFileError",
    "convert_weights_file",
    "load_checkpoint",
    "load_weights_file",
    "save_weights_file",
    "swap_in_moving_average",
]

logger = logging.getLogger(__name__)

Array = Union[torch.Tensor, np.ndarray]

_PICKLE = (".pkl",)
_TORCH = (".pth", ".pt")
_SAFETENSORS = (".safetensors",)
WEIGHTS_EXTENSIONS = _PICKLE + _TORCH + _SAFETENSORS
# where a checkpoint trained with MODEL_EMA keeps the moving average of the weights:
# {"model": state dict, "updates": optimizer steps averaged}
EMA_CHECKPOINT_KEY = "ema"
_FORMATS_HELP = (
    ".pkl (Detectron2 / model zoo), .pth or .pt (PyTorch) or .safetensors; "
    "tools/convert-weights.py converts between them"
)


class WeightsFileError(ValueError):
    """A weights file cannot be read or written; the message names the file and the problem."""


class UnsafeWeightsError(WeightsFileError):
    """A weights file asks to call something that weights files never need; nothing was called.

    Attributes:
        path: the file.
        refused: the refused global, e.g. "posix.system".
    """

    def __init__(self, path: str, refused: str):
        hint = ""
        if refused.startswith("torch."):
            hint = (
                " (torch tensors stored with pickle can only be rebuilt by running code: save "
                "them with torch.save as .pth, or as .safetensors)"
            )
        super().__init__(
            f"{path} is not a plain weights file: it asks to run '{refused}', which a weights "
            f"file never needs{hint}. It was refused before anything in it ran. Only load "
            "weights from sources you trust; share weights as .safetensors."
        )
        self.path = path
        self.refused = refused


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, and nothing else."""
    if encoding not in ("latin1", "latin-1"):
        raise ValueError(f"_codecs.encode with encoding {encoding!r} is not pickled bytes")
    return text.encode("latin1")


def _numpy_functions() -> Dict[str, Any]:
    """numpy's pickle reconstruction functions under their numpy 1 and numpy 2 module names."""
    functions = (
        (np.zeros(0).__reduce__()[0], "multiarray"),  # _reconstruct: arrays, protocols 2-4
        (np.float32(0).__reduce__()[0], "multiarray"),  # scalar: numpy scalars
        (np.zeros(1).__reduce_ex__(5)[0], "numeric"),  # _frombuffer: arrays, protocol 5
    )
    return {
        f"{package}.{module}.{function.__name__}": function
        for function, module in functions
        for package in ("numpy.core", "numpy._core")
    }


# Every global a weights pickle may name, and what it is rebuilt with.
_PICKLE_GLOBALS: Dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "_codecs.encode": _latin1_encode,
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": np.dtype,
    **_numpy_functions(),
}
# The same for torch.load(weights_only=True), which also needs the types it restores state into
# (numpy's dtype classes); it allows tensors and plain containers itself.
_TORCH_NUMPY_GLOBALS = [
    *((function, name) for name, function in _numpy_functions().items()),
    np.ndarray,
    np.dtype,
    *(getattr(np.dtypes, name) for name in np.dtypes.__all__),
]


class _WeightsUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``_PICKLE_GLOBALS``."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")  # Python 2 pickles (Caffe2, Detectron1)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        found = _PICKLE_GLOBALS.get(f"{module}.{name}")
        if found is None:
            raise UnsafeWeightsError(self._path, f"{module}.{name}")
        if isinstance(found, types.FunctionType):
            # a fresh stand-in: a pickle's BUILD may set attributes on what it gets, and must
            # not reach the real function (types and built-ins refuse attributes themselves)
            return lambda *args: found(*args)
        return found


def _reason(error: BaseException) -> str:
    """The informative line of a loading error (torch's weights-only errors are long)."""
    detail = re.search(r"(?:Unpickler error|WeightsUnpickler error):\s*(.+)", str(error))
    if detail:
        return detail.group(1).strip()
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # the first sentence: torch appends advice about corrupted files, given here already
    return lines[0].split(". ")[0].rstrip(".") if lines else type(error).__name__


def _unreadable(path: str, kind: str, error: BaseException) -> WeightsFileError:
    return WeightsFileError(
        f"{path} cannot be read as a {kind} file ({_reason(error)}). It is truncated, damaged "
        f"or of another format; weights files are {_FORMATS_HELP}."
    )


# What a truncated or malformed pickle raises (a bad memo index, a malformed numpy state, ...).
_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
)


def _load_pickle(path: str) -> Any:
    with open(path, "rb") as file:
        try:
            return _WeightsUnpickler(file, path).load()
        except UnsafeWeightsError:
            raise
        except _PICKLE_ERRORS as error:
            raise _unreadable(path, "pickled weights", error) from error


def _load_torch(path: str) -> Any:
    try:
        with torch.serialization.safe_globals(_TORCH_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(error))
        if refused:
            raise UnsafeWeightsError(path, refused.group(1) or refused.group(2)) from error
        raise _unreadable(path, "PyTorch", error) from error
    except (RuntimeError, EOFError, ValueError) as error:
        raise _unreadable(path, "PyTorch", error) from error


def _safetensors_module():
    try:
        import safetensors
        import safetensors.torch
    except ImportError as error:
        raise ImportError(
            "Reading and writing .safetensors files needs the safetensors package: "
            "pip install safetensors==0.7.0 (listed in requirements.txt)."
        ) from error
    return safetensors


def _load_safetensors(path: str) -> Dict[str, Any]:
    safetensors = _safetensors_module()
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            weights = {name: file.get_tensor(name) for name in file.keys()}
    except safetensors.SafetensorError as error:
        raise _unreadable(path, "safetensors", error) from error
    checkpoint: Dict[str, Any] = {"model": weights}
    if "__author__" in metadata:
        checkpoint["__author__"] = metadata["__author__"]
    if "matching_heuristics" in metadata:
        checkpoint["matching_heuristics"] = metadata["matching_heuristics"] == "True"
    return checkpoint


def load_weights_file(path: str) -> Any:
    """Read a local weights file without running code from it.

    Args:
        path: a ``.pkl``, ``.pth``, ``.pt`` or ``.safetensors`` file.

    Returns:
        What the file holds: for ``.pkl`` and ``.pth``/``.pt`` the stored object (usually a
        dict); for ``.safetensors`` ``{"model": {name: tensor}}`` plus ``"__author__"`` and
        ``"matching_heuristics"`` when its metadata has them.

    Raises:
        FileNotFoundError: there is no such file.
        UnsafeWeightsError: the file names a global that weights files never need.
        WeightsFileError: the file is empty, truncated, damaged or of an unknown format.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file '{path}' does not exist")
    extension = os.path.splitext(path)[1].lower()
    if extension not in WEIGHTS_EXTENSIONS:
        found = f"'{extension}'" if extension else "(no extension)"
        raise WeightsFileError(
            f"{path}: unknown weights format {found}; weights files are {_FORMATS_HELP}."
        )
    if os.path.getsize(path) == 0:
        raise WeightsFileError(
            f"{path} is empty (0 bytes): it was not completely written or downloaded."
        )
    if extension in _PICKLE:
        return _load_pickle(path)
    if extension in _TORCH:
        return _load_torch(path)
    return _load_safetensors(path)


def _detectron2_pickle_checkpoint(data: Any, path: str) -> Dict[str, Any]:
    """What Detectron2's ``DetectionCheckpointer`` makes of a ``.pkl`` file's content."""
    if not isinstance(data, Mapping):
        raise WeightsFileError(
            f"{path} holds a {type(data).__name__}, not a dict of weights; weights files are "
            f"{_FORMATS_HELP}."
        )
    if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
        return dict(data)
    # Caffe2 / Detectron1 model zoo: detection models keep their weights under "blobs"
    blobs = data.get("blobs", data)
    weights = {name: value for name, value in blobs.items() if not name.endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read a weights file as Detectron2's checkpointer does, without running code from it.

    Returns:
        A dict with "model" (a dict of tensors or numpy arrays) and whatever else the file
        holds: "__author__" and "matching_heuristics" for model-zoo files; "optimizer",
        "scheduler", "iteration", ... for training checkpoints.

    Raises:
        as :func:`load_weights_file`.
    """
    content = load_weights_file(path)
    if os.fspath(path).lower().endswith(_PICKLE):
        return _detectron2_pickle_checkpoint(content, path)
    if isinstance(content, Mapping) and "model" in content:
        return dict(content)
    return {"model": content}


def _check_weights(weights: Any, path: str) -> Dict[str, Array]:
    if not isinstance(weights, Mapping) or not weights:
        raise WeightsFileError(f"{path} holds no model weights (its 'model' entry is empty).")
    for name, value in weights.items():
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            raise WeightsFileError(
                f"{path}: model entry '{name}' is a {type(value).__name__}, not an array."
            )
    return dict(weights)


def _to_tensor(value: Array) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value.detach().cpu().contiguous()


def _to_numpy(name: str, value: Array, path: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if value.dtype == torch.bfloat16:
        raise WeightsFileError(
            f"cannot write {path}: '{name}' is bfloat16, which numpy (and so .pkl) cannot "
            "hold; write .pth or .safetensors instead."
        )
    return value.detach().cpu().numpy()


def save_weights_file(
    path: str,
    weights: Mapping[str, Array],
    *,
    author: Optional[str] = None,
    matching_heuristics: bool = False,
) -> None:
    """Write model weights in the format of ``path``'s extension, atomically.

    - ``.pkl``: Detectron2's model-zoo format, ``{"model": {name: numpy array},
      "__author__": author, "matching_heuristics": ...}``;
    - ``.pth`` / ``.pt``: ``{"model": {name: tensor}}`` plus "__author__" and
      "matching_heuristics" when given;
    - ``.safetensors``: the tensors, with "__author__" and "matching_heuristics" in its
      metadata (and "format": "pt", as Hugging Face writes).

    Args:
        path: the file to write.
        weights: {parameter or buffer name: tensor or numpy array}.
        author: who made the weights ("__author__"); a ``.pkl`` needs one, "mask2former" when
            None.
        matching_heuristics: whether Detectron2 should match the names to the model's by
            suffix when loading (for backbone-only weights, e.g. ImageNet models).

    Raises:
        WeightsFileError: unknown extension, or weights the format cannot hold.
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension in _PICKLE:
        arrays = {name: _to_numpy(name, value, path) for name, value in weights.items()}
        data: Dict[str, Any] = {"model": arrays, "__author__": author or "mask2former"}
        data["matching_heuristics"] = matching_heuristics
        with atomic_open(path, "wb") as file:
            pickle.dump(data, file, protocol=4)
    elif extension in _TORCH:
        data = {"model": {name: _to_tensor(value) for name, value in weights.items()}}
        if author is not None:
            data["__author__"] = author
        if matching_heuristics:
            data["matching_heuristics"] = True
        with atomic_open(path, "wb") as file:
            torch.save(data, file)
    elif extension in _SAFETENSORS:
        metadata = {"format": "pt", "matching_heuristics": str(bool(matching_heuristics))}
        if author is not None:
            metadata["__author__"] = author
        tensors = {name: _to_tensor(value) for name, value in weights.items()}
        content = _safetensors_module().torch.save(tensors, metadata=metadata)
        with atomic_open(path, "wb") as file:
            file.write(content)
    else:
        raise WeightsFileError(
            f"cannot write {path}: unknown weights format '{extension}'; write {_FORMATS_HELP}."
        )


def swap_in_moving_average(checkpoint: Dict[str, Any]) -> Optional[Tuple[Any, int]]:
    """Make the moving average of the weights that a checkpoint trained with ``MODEL_EMA``
    holds its "model", in place (what inference loads).

    Returns:
        The raw weights it replaced and the number of steps averaged; None, with the checkpoint
        unchanged, when it holds no average.
    """
    average = checkpoint.get(EMA_CHECKPOINT_KEY)
    if not isinstance(average, Mapping):
        return None
    del checkpoint[EMA_CHECKPOINT_KEY]
    raw = checkpoint["model"]
    checkpoint["model"] = average["model"]
    return raw, int(average["updates"])


def convert_weights_file(
    input_path: str, output_path: str, *, average: bool = True
) -> Tuple[int, List[str]]:
    """Convert the model weights of a ``.pkl``, ``.pth`` or ``.safetensors`` file to another.

    The names and values are kept, as are "__author__" and "matching_heuristics". A training
    checkpoint's optimizer, scheduler, iteration, ... are left out. A checkpoint trained with
    ``MODEL_EMA`` gives its moving average of the weights (what inference uses), or with
    ``average=False`` its raw weights.

    Returns:
        The number of tensors written, and the names of the entries left out.

    Raises:
        as :func:`load_weights_file` and :func:`save_weights_file`.
    """
    checkpoint = load_checkpoint(input_path)
    if average:
        swapped = swap_in_moving_average(checkpoint)
        if swapped is not None:
            checkpoint["raw weights (model)"] = swapped[0]
    weights = _check_weights(checkpoint.pop("model"), input_path)
    author = checkpoint.pop("__author__", None)
    matching_heuristics = bool(checkpoint.pop("matching_heuristics", False))
    save_weights_file(output_path, weights, author=author, matching_heuristics=matching_heuristics)
    return len(weights), sorted(checkpoint)
