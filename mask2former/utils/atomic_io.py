"""Files that are never half-written.

A job killed while writing a file in place leaves it truncated. :func:`atomic_open` writes to a
temporary file in the same folder, flushes it to disk and renames it over the target
(``os.replace`` is atomic on POSIX), so the target holds either its old content or the complete
new one.
"""

import contextlib
import os
import uuid
from typing import IO, Iterator

__all__ = ["atomic_open"]


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open ``path`` for writing, atomically: the file appears, complete, when the block ends.

    If the block raises (or the process dies), ``path`` keeps its old content and the temporary
    file is removed (or, after a kill, left as a hidden ``.NAME.*.tmp`` file).

    Args:
        path: a local file.
        mode: "wb" or "w".

    Example::

        with atomic_open("metrics.json", "w") as f:
            json.dump(results, f)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    folder, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    tmp_path = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    # O_EXCL: never reuse someone else's file; 0o666 and the umask give the usual permissions
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
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
