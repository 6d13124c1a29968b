"""A checkpointer whose files are never half-written.

Detectron2's ``Checkpointer.save`` writes ``model_XXXX.pth`` and then ``last_checkpoint`` in
place: a job killed during the write leaves a truncated model file, and ``last_checkpoint`` may
name it, so ``--resume`` fails. Here every file is written to a temporary file in the same
folder, flushed to disk and renamed over the target (``os.replace`` is atomic on POSIX), and
``last_checkpoint`` is only updated after the checkpoint it names is complete.
"""

import logging
import os
import tempfile
from typing import Any, Callable, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

logger = logging.getLogger(__name__)


def atomic_write(path: str, write: Callable[[Any], None], *, binary: bool = True) -> None:
    """Write a file so that ``path`` holds either its old content or the complete new one.

    Args:
        path: the destination file (a local path).
        write: called with an open file object to write the content.
        binary: open the temporary file in binary mode.
    """
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with crash-safe ``save`` and ``last_checkpoint`` tagging.

    Only local ``save_dir`` folders are supported for saving (the temporary file and the rename
    need a real file system); loading works with every path Detectron2 accepts.
    """

    def save(self, name: str, **kwargs: Any) -> None:
        """Save the model and the checkpointables as ``{save_dir}/{name}.pth``.

        Args:
            name: file name without extension.
            kwargs: extra data stored in the checkpoint (e.g. ``iteration``).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Point ``{save_dir}/last_checkpoint`` at ``last_filename_basename`` atomically."""
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename), binary=False)
