"""Detectron2's checkpointer, with files that are never half-written and loads that run no code.

Writing: Detectron2's ``Checkpointer.save`` writes ``model_XXXX.pth`` and then
``last_checkpoint`` in place, through its path manager. A job killed during the write would
leave a truncated model file that ``last_checkpoint`` may name, and ``--resume`` would fail.
Here the path manager opens local files for writing with
:func:`~mask2former.utils.atomic_io.atomic_open` (temporary file, fsync, rename), so each file
is complete or untouched, and since ``save`` tags ``last_checkpoint`` after writing the
checkpoint, it only ever names a complete file.

Reading: a checkpoint trained with ``MODEL_EMA`` holds the moving average of the weights
under "ema"; ``use_average=True`` (inference) loads it instead of the raw weights. Every weights
file goes through :mod:`mask2former.utils.weights_io` (a restricted
unpickler for ``.pkl``, ``weights_only`` for ``.pth``, and ``.safetensors``), then through
Detectron2's own handling (model-zoo name matching, Caffe2 conversion, ``?matching_heuristics``
URLs).
"""

import os
from typing import Any, Dict, Optional

from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic_io import atomic_open
from ..utils.weights_io import (
    load_checkpoint,
    load_weights_file,
    save_weights_file,
    swap_in_moving_average,
)


class _AtomicWritePathManager:
    """A path manager whose ``open`` writes local files atomically; the rest is delegated."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def open(self, path: str, mode: str = "r", **kwargs: Any):
        if mode in ("w", "wb") and "://" not in path:
            return atomic_open(path, mode)
        return self._path_manager.open(path, mode, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._path_manager, name)


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with crash-safe writes and weights loading that runs no code.

    Files are written atomically in local ``save_dir`` folders (others are written as
    Detectron2 does). Loading accepts every path Detectron2 accepts; the file itself must be a
    ``.pkl``, ``.pth``, ``.pt`` or ``.safetensors`` file (see
    :mod:`mask2former.utils.weights_io`).
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        save_to_disk=None,
        use_average: bool = False,
        **checkpointables,
    ):
        """
        Args:
            model, save_dir, save_to_disk, checkpointables: as Detectron2's.
            use_average: load the moving average of the weights where a checkpoint holds one
                (trained with ``MODEL_EMA``) instead of its raw weights: what inference does
                when ``MODEL_EMA.USE_FOR_INFERENCE``.
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.path_manager = _AtomicWritePathManager(self.path_manager)
        self._skip_tag = False
        self.use_average = use_average

    def save(self, name: str, *, tag_last_checkpoint: bool = True, **kwargs: Any) -> None:
        """``Checkpointer.save``; with ``tag_last_checkpoint=False`` the file is written
        without becoming the one ``--resume`` loads (``model_best.pth``: an older iteration)."""
        if tag_last_checkpoint:
            super().save(name, **kwargs)
            return
        self._skip_tag = True
        try:
            super().save(name, **kwargs)
        finally:
            self._skip_tag = False

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._skip_tag:
            super().tag_last_checkpoint(last_filename_basename)

    def save_safetensors(
        self, name: str, weights: Optional[Dict[str, Any]] = None
    ) -> Optional[str]:
        """Save weights alone as ``{save_dir}/{name}.safetensors``.

        Args:
            name: the file's name without extension.
            weights: a state dict to save; None saves the model's.

        Returns:
            The path written, or None where this checkpointer does not save (no ``save_dir``,
            or not the main process).
        """
        if not self.save_dir or not self.save_to_disk:
            return None
        path = os.path.join(self.save_dir, f"{name}.safetensors")
        self.logger.info("Saving the weights to %s", path)
        save_weights_file(path, self.model.state_dict() if weights is None else weights)
        return path

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.lower().endswith(".pkl"):  # Detectron2 would unpickle it with plain pickle
            checkpoint = load_checkpoint(filename)
            self.logger.info("Reading a file from '%s'", checkpoint["__author__"])
        else:
            checkpoint = super()._load_file(filename)
        swapped = swap_in_moving_average(checkpoint) if self.use_average else None
        if swapped is not None:
            self.logger.info(
                "Using the moving average of the weights in %s (%d steps; MODEL_EMA."
                "USE_FOR_INFERENCE False uses its raw weights).",
                filename,
                swapped[1],
            )
        return checkpoint

    def _torch_load(self, filename: str) -> Any:
        return load_weights_file(filename)
