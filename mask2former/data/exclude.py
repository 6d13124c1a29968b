"""Exclude files: the images that training leaves out (``DATASETS.EXCLUDE_FILE``).

An exclude file is plain text with one entry per line: an image id, or an image file name (the
path as the data set registers it, or only its base name). ``#`` starts a comment, blank lines
are ignored. ``datasets/check_dataset.py --write-exclude FILE`` writes one, an image id per bad
image with its file name and problems as comment::

    397133  # /data/coco/train2017/000000397133.jpg: image unreadable

An image id matches the images of that id in every data set of ``DATASETS.TRAIN``; when several
of them use the same ids, list file names instead. For video data sets (YouTube-VIS style) an
entry is a video id or a video's frame folder.
"""

import logging
import os
from typing import Dict, Iterable, List, Sequence, Set, Tuple

from .records import record_id, record_path

__all__ = ["exclude_images", "read_exclude_file", "write_exclude_file"]

logger = logging.getLogger(__name__)


def read_exclude_file(path: str) -> Set[str]:
    """The entries of an exclude file (image ids and file names, as strings).

    Raises:
        FileNotFoundError: naming the file and how to write one.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"DATASETS.EXCLUDE_FILE {path!r} does not exist. Write one with "
            "`python datasets/check_dataset.py DATASET_NAME --write-exclude FILE`, or set the "
            'key to "" to leave no image out.'
        )
    entries = set()
    with open(path) as f:
        for line in f:
            entry = line.split("#", 1)[0].strip()
            if entry:
                entries.add(entry)
    return entries


def write_exclude_file(path: str, entries: Iterable[Tuple[str, str]]) -> None:
    """Write ``(entry, comment)`` pairs, one per line, in the format :func:`read_exclude_file`
    reads."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        f.write("# images to leave out of training: set DATASETS.EXCLUDE_FILE to this file\n")
        for entry, comment in entries:
            if "#" in entry or "\n" in entry:
                raise ValueError(f"Cannot write {entry!r} to an exclude file: it holds '#'.")
            f.write(f"{entry}  # {comment}\n" if comment else f"{entry}\n")


def _keys(record: Dict) -> List[str]:
    """The entries that match a dataset dict: its image id and file names (a video's: its
    video id and frame folder)."""
    path = record_path(record)
    keys = [path, os.path.basename(path)]
    if record_id(record) is not None:
        keys.append(str(record_id(record)))
    return keys


def exclude_images(records: Sequence[Dict], entries: Set[str]) -> Tuple[List[Dict], Set[str]]:
    """Drop the dataset dicts that an entry of an exclude file matches.

    Returns:
        the kept dicts, and the entries that matched no dict.
    """
    kept, used = [], set()
    for record in records:
        matched = [key for key in _keys(record) if key in entries]
        if matched:
            used.update(matched)
        else:
            kept.append(record)
    return kept, entries - used
