"""Data loaders that survive bad samples.

A sample is *bad* when the dataset mapper fails on it: an unreadable, truncated or missing
image, a missing or inconsistent annotation PNG, a size that disagrees with the annotation, ...
In Detectron2 the exception kills a data-loader worker and with it the whole run. Here:

- **training** (:func:`build_train_loader`): the mapper's exception makes Detectron2's
  ``MapDataset`` map another, randomly drawn sample in its place, so every batch stays full.
  The report travels with the next good sample to the main process, which logs each bad file
  once with the reason and counts every replacement (:class:`BadSampleLog`;
  ``mask2former.engine.hooks.BadSampleHook`` puts the count in the event storage and merges the
  reports of all training processes).
- **evaluation** (:func:`build_test_loader`): a bad image is logged and left out; the
  evaluators score the images they were given, and a warning at the end says how many were
  left out. An image's ground-truth PNGs are part of its sample: Detectron2's inference mapper
  reads the semantic PNG, and the loader reads the panoptic PNG as well, which panopticapi
  would otherwise read only at the end, where a missing, unreadable or wrong-sized one stops
  the whole evaluation; semantic values that are neither a class nor the ignore label, which
  ``SemSegEvaluator`` would score silently wrong, are checked too. An image with such a PNG is
  left out of every metric, whichever outputs are evaluated.

In both, when more than ``DATALOADER.MAX_BAD_SAMPLE_FRACTION`` of a data set's images have
turned out bad, :class:`TooManyBadSamplesError` stops the run with a summary of the bad files:
a few broken files are expected in real data, a large fraction means a wrong data set path or
a broken preparation step. This also holds in every DataLoader worker, so a worker that meets
only bad samples stops instead of retrying forever.
"""

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.detection_utils import read_image
from detectron2.utils import comm

from ..utils.signals import install_worker_stop_handlers
from .dataset_mappers import is_video_config
from .dataset_mappers.base import MaskFormerMapperBase
from .exclude import exclude_images, read_exclude_file
from .records import record_id, record_path, video_has_annotations
from .repeat_factors import REPEAT_FACTOR_SAMPLER, build_repeat_factor_sampler

__all__ = [
    "BAD_SAMPLES_KEY",
    "BadSample",
    "BadSampleLog",
    "MarkBadSamples",
    "TooManyBadSamplesError",
    "build_test_loader",
    "build_train_loader",
]

logger = logging.getLogger(__name__)

# Key under which a training sample carries the reports of the bad samples it replaces, from
# the DataLoader worker to the main process (which removes it).
BAD_SAMPLES_KEY = "replaced_bad_samples"
# Bad files listed in the message of TooManyBadSamplesError (all of them are in the log).
_LISTED_FILES = 50
# A data set record's label files, which a mapper reads besides the image: (key, what it is)
_LABEL_FILES = (("sem_seg_file_name", "semantic PNG"), ("pan_seg_file_name", "panoptic PNG"))


@dataclass(frozen=True)
class BadSample:
    """A sample that the dataset mapper failed on.

    Attributes:
        file_name: the sample's image file (its identity; the reason names other files); a
            video's frame folder.
        image_id: the sample's image id (a video's video id), when the data set has one.
        reason: the exception, as "ExceptionType: message" on one line.
    """

    file_name: str
    image_id: Optional[Any]
    reason: str

    @classmethod
    def from_error(cls, record: Dict, error: Exception) -> "BadSample":
        """The report of ``error`` raised while mapping ``record``. An error that names no
        file (e.g. Pillow's "image file is truncated", or a bare AssertionError when a label
        PNG has another size than its image) may come from the sample's label PNGs as well as
        from its image: the reason then names them."""
        message = " ".join(str(error).split())
        reason = f"{type(error).__name__}: {message}" if message else type(error).__name__
        labels = [
            f"{kind} {record[key]}"
            for key, kind in _LABEL_FILES
            if record.get(key) and str(record[key]) not in message
        ]
        if labels and str(record.get("file_name")) not in message:
            reason += f" (reading the image or its {' or '.join(labels)})"
        return cls(record_path(record), record_id(record), reason)


class TooManyBadSamplesError(RuntimeError):
    """More than ``DATALOADER.MAX_BAD_SAMPLE_FRACTION`` of a data set's images are bad."""


class BadSampleLog:
    """The bad samples one process has met: logs each file once, counts, checks the threshold.

    The threshold compares the number of distinct bad files with the data set's size, so it
    never stops a run for a few broken files met early, and stops a run whose samples are all
    bad after ``max_fraction * dataset_size`` of them.
    """

    def __init__(
        self,
        what: str,
        *,
        outcome: str,
        dataset_size: int,
        max_fraction: float,
        dataset_names: Sequence[str],
        announce: bool = True,
    ):
        """
        Args:
            what: the data, in messages: "training" or "evaluation on NAME".
            outcome: what becomes of a bad sample, in messages.
            dataset_size: number of images the loader draws from.
            max_fraction: ``DATALOADER.MAX_BAD_SAMPLE_FRACTION``.
            dataset_names: the registered data sets, named in the advice of the summary.
            announce: log each new bad file (off for the copies in DataLoader workers, whose
                reports the main process logs).
        """
        self.what = what
        self.outcome = outcome
        self.dataset_size = max(1, dataset_size)
        self.max_fraction = max_fraction
        self.dataset_names = list(dataset_names)
        self.announce = announce
        self.files: Dict[str, BadSample] = {}
        # bad samples met by this process (a file met twice counts twice)
        self.count = 0
        # bad samples met by the other processes, as of the last merge
        self._other_processes_count = 0

    @property
    def total_count(self) -> int:
        """Bad samples met by all processes (the others' as of the last :meth:`merge`)."""
        return self.count + self._other_processes_count

    def add(self, bad: BadSample) -> None:
        """Record a bad sample met by this process.

        Raises:
            TooManyBadSamplesError: past the threshold.
        """
        self.count += 1
        self._remember(bad)
        self.check()

    def _remember(self, bad: BadSample) -> None:
        if bad.file_name in self.files:
            return
        self.files[bad.file_name] = bad
        if self.announce:
            logger.warning(
                "Bad sample in %s: %s (%s): %s.", self.what, bad.file_name, bad.reason, self.outcome
            )

    def snapshot(self) -> Tuple[int, List[BadSample]]:
        """What :meth:`merge` needs from this process: its count and the bad files it knows."""
        return self.count, list(self.files.values())

    def merge(self, snapshots: Sequence[Tuple[int, List[BadSample]]]) -> None:
        """Take in the :meth:`snapshot` of every process (this one's included, at its rank).

        Raises:
            TooManyBadSamplesError: when the bad files of all processes together are past the
                threshold (every process decides the same).
        """
        rank = comm.get_rank()
        self._other_processes_count = sum(c for i, (c, _) in enumerate(snapshots) if i != rank)
        for _count, bad_samples in snapshots:
            for bad in bad_samples:
                self._remember(bad)
        self.check()

    @property
    def fraction(self) -> float:
        return len(self.files) / self.dataset_size

    def check(self) -> None:
        """Raise :class:`TooManyBadSamplesError` past the threshold."""
        if self.fraction > self.max_fraction:
            raise TooManyBadSamplesError(self.summary())

    def summary(self) -> str:
        """The message of :class:`TooManyBadSamplesError`: numbers, files, what to do."""
        lines = [
            f"Stopping {self.what}: {len(self.files)} of the {self.dataset_size} images "
            f"({100 * self.fraction:.1f}%) could not be read or mapped, more than "
            f"DATALOADER.MAX_BAD_SAMPLE_FRACTION = {self.max_fraction:g} allows. So many bad "
            "files usually mean a wrong data set path or a broken preparation step rather than "
            "a few broken files.",
            "Bad files:",
        ]
        listed = list(self.files.values())[:_LISTED_FILES]
        lines += [f"  {bad.file_name}: {bad.reason}" for bad in listed]
        if len(self.files) > len(listed):
            lines.append(f"  ... and {len(self.files) - len(listed)} more (all are in the log)")
        names = " ".join(self.dataset_names) or "DATASET_NAME"
        lines.append(
            f"Check the data with `python datasets/check_dataset.py {names}`; its "
            "--write-exclude option writes the file for DATASETS.EXCLUDE_FILE, which leaves known "
            "bad images out of training. To accept more bad files, raise "
            "DATALOADER.MAX_BAD_SAMPLE_FRACTION."
        )
        return "\n".join(lines)


def merge_across_processes(log: BadSampleLog) -> None:
    """Merge the logs of all processes (a collective call: every process must make it)."""
    if comm.get_world_size() > 1:
        log.merge(comm.all_gather(log.snapshot()))


class _ReplaceBadSamples:
    """Training mapper wrapper: a sample the mapper fails on becomes None, which makes
    Detectron2's ``MapDataset`` map another sample in its place; the report rides on the next
    good sample (under :data:`BAD_SAMPLES_KEY`) to the main process.

    Each DataLoader worker has its own copy, whose quiet :class:`BadSampleLog` stops the worker
    past the threshold: a worker that meets only bad samples never returns a sample.
    """

    def __init__(self, mapper: Callable[[Dict], Dict], log: BadSampleLog):
        self.mapper = mapper
        self.log = log
        self._pending: List[BadSample] = []

    def __call__(self, record: Dict) -> Optional[Dict]:
        install_worker_stop_handlers()  # in a DataLoader worker: mask2former.utils.signals
        try:
            sample = self.mapper(record)
        # a broken file makes readers and mappers raise almost anything (OSError, ValueError,
        # KeyError, IndexError, cv2.error, ...): any exception marks the sample as bad
        except Exception as error:
            bad = BadSample.from_error(record, error)
            self._pending.append(bad)
            self.log.add(bad)
            return None
        if self._pending:
            sample[BAD_SAMPLES_KEY] = self._pending
            self._pending = []
        return sample


class _CheckGroundTruth:
    """Evaluation mapper wrapper that checks the ground truth the evaluators will read.

    - **Panoptic PNG.** Detectron2's inference ``DatasetMapper`` does not read it; panopticapi
      reads it only at the end, in ``COCOPanopticEvaluator.evaluate``, where a PNG that is
      missing, unreadable or of another size than the image stops the whole evaluation, with
      no metric. Read here.
    - **Semantic label values.** The mapper reads the semantic PNG (``SemSegEvaluator`` reads
      it again), but a value that is neither a class index nor the ignore label is scored
      silently wrong by ``SemSegEvaluator``: its confusion matrix counts the pixel in another
      class's cell (or fails to reshape, for large values). Checked here when the data set's
      metadata gives its classes.

    A failed check makes the sample bad, like an unreadable image: reported, and left out of
    every metric, whichever outputs are evaluated.
    """

    def __init__(
        self,
        mapper: Callable[[Dict], Dict],
        *,
        num_semantic_classes: Optional[int] = None,
        ignore_label: Optional[int] = None,
    ):
        """
        Args:
            mapper: the evaluation mapper.
            num_semantic_classes: semantic labels are 0 .. num_semantic_classes - 1 (None: no
                check of the values).
            ignore_label: the one other value allowed in semantic labels.
        """
        self.mapper = mapper
        self.num_semantic_classes = num_semantic_classes
        self.ignore_label = ignore_label

    def __call__(self, record: Dict) -> Dict:
        sample = self.mapper(record)
        path = record.get("pan_seg_file_name")
        if path is not None:
            try:
                height, width = read_image(path, "RGB").shape[:2]
            # see _ReplaceBadSamples
            except Exception as error:
                raise OSError(f"the panoptic PNG {path} cannot be read ({error})") from error
            # the size of the predictions (Detectron2's DatasetMapper sets it)
            expected = (sample.get("height", height), sample.get("width", width))
            if (height, width) != expected:
                raise ValueError(
                    f"the panoptic PNG {path} is {width}x{height} pixels, the image "
                    f"{expected[1]}x{expected[0]}"
                )
        labels = sample.get("sem_seg")
        if labels is not None and self.num_semantic_classes is not None:
            values = labels.unique()
            wrong = values[(values < 0) | (values >= self.num_semantic_classes)]
            wrong = wrong[wrong != self.ignore_label] if self.ignore_label is not None else wrong
            if len(wrong):
                shown = ", ".join(str(int(value)) for value in wrong[:5])
                raise ValueError(
                    f"the semantic PNG {record.get('sem_seg_file_name', '')} holds the values "
                    f"{shown}{' ...' if len(wrong) > 5 else ''}, neither a class (0 to "
                    f"{self.num_semantic_classes - 1}) nor the ignore label "
                    f"({self.ignore_label})"
                )
        return sample


class MarkBadSamples:
    """Evaluation mapper wrapper: a sample the mapper fails on becomes a :class:`BadSample`
    (not None, which ``MapDataset`` would replace by another image)."""

    def __init__(self, mapper: Callable[[Dict], Dict]):
        self.mapper = mapper

    def __call__(self, record: Dict) -> Any:
        install_worker_stop_handlers()  # in a DataLoader worker: mask2former.utils.signals
        try:
            return self.mapper(record)
        # see _ReplaceBadSamples
        except Exception as error:
            return BadSample.from_error(record, error)


class SkipBadSamplesTrainLoader:
    """A Detectron2 training loader whose bad samples were replaced: takes the reports off the
    samples and records them in :attr:`bad_samples` (which may stop training)."""

    def __init__(self, loader, bad_samples: BadSampleLog):
        self.loader = loader
        self.bad_samples = bad_samples
        self._iterator = None

    def close(self) -> None:
        """End the iteration under way, which shuts its DataLoader workers down now rather
        than when the iterator is garbage-collected (training stopped by a signal:
        :mod:`mask2former.engine.interrupt`)."""
        # a generator (Detectron2's aspect-ratio grouping) ends its DataLoader iterator when
        # closed; a DataLoader's own iterator has the method that its deletion calls
        end = getattr(self._iterator, "close", None) or getattr(
            self._iterator, "_shutdown_workers", None
        )
        if end is not None:
            end()
        self._iterator = None

    def __iter__(self) -> Iterator[List[Dict]]:
        self._iterator = iter(self.loader)
        for batch in self._iterator:
            for sample in batch:
                for bad in sample.pop(BAD_SAMPLES_KEY, ()):
                    self.bad_samples.add(bad)
            yield batch


class SkipBadImagesTestLoader:
    """A Detectron2 inference loader without its bad images: each is logged and left out, and
    a warning at the end says how many (over all processes)."""

    def __init__(self, loader, bad_samples: BadSampleLog):
        self.loader = loader
        self.bad_samples = bad_samples

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[List[Dict]]:
        for batch in self.loader:
            good = []
            for sample in batch:
                if isinstance(sample, BadSample):
                    self.bad_samples.add(sample)
                else:
                    good.append(sample)
            if good:
                yield good
        merge_across_processes(self.bad_samples)
        if self.bad_samples.files:
            logger.warning(
                "%s: %d of the %d images could not be read or mapped and are left out of the "
                "metrics: %s.",
                self.bad_samples.what.capitalize(),
                len(self.bad_samples.files),
                self.bad_samples.dataset_size,
                ", ".join(sorted(self.bad_samples.files)),
            )


def _training_dicts(cfg: CfgNode) -> List[Dict]:
    """``DATASETS.TRAIN``'s dataset dicts as Detectron2's train loader builds them (Mask2Former
    uses no keypoints or proposals), less the images of ``DATASETS.EXCLUDE_FILE``."""
    filter_empty = cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    # Detectron2's filter reads images' annotations; videos' are filtered here
    video = is_video_config(cfg)
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=filter_empty and not video)
    if filter_empty and video:
        kept = [record for record in dicts if video_has_annotations(record)]
        logger.info("Left out %d videos without annotations.", len(dicts) - len(kept))
        dicts = kept
    if not cfg.DATASETS.EXCLUDE_FILE:
        return dicts
    entries = read_exclude_file(cfg.DATASETS.EXCLUDE_FILE)
    kept, unmatched = exclude_images(dicts, entries)
    logger.info(
        "Left out %d training images listed in DATASETS.EXCLUDE_FILE %s; %d remain.",
        len(dicts) - len(kept),
        cfg.DATASETS.EXCLUDE_FILE,
        len(kept),
    )
    if unmatched:
        logger.warning(
            "%d entries of DATASETS.EXCLUDE_FILE %s match no image of %s (was it written for "
            "another data set?), e.g. %s",
            len(unmatched),
            cfg.DATASETS.EXCLUDE_FILE,
            ", ".join(cfg.DATASETS.TRAIN),
            ", ".join(sorted(unmatched)[:5]),
        )
    if not kept:
        raise ValueError(
            f"DATASETS.EXCLUDE_FILE {cfg.DATASETS.EXCLUDE_FILE} leaves out every image of "
            f"{', '.join(cfg.DATASETS.TRAIN)}."
        )
    return kept


def build_train_loader(
    cfg: CfgNode, mapper: Callable[[Dict], Dict], total_batch_size: Optional[int] = None
) -> SkipBadSamplesTrainLoader:
    """Detectron2's training loader over ``DATASETS.TRAIN`` (less ``DATASETS.EXCLUDE_FILE``)
    that replaces bad samples and reports them (see the module docstring). Its sampler is
    Detectron2's ``DATALOADER.SAMPLER_TRAIN``; ``RepeatFactorTrainingSampler`` also works with
    panoptic and semantic data sets (:mod:`mask2former.data.repeat_factors`).

    Args:
        cfg: the full config.
        mapper: the dataset mapper, e.g. ``build_dataset_mapper(cfg, is_train=True)``.
        total_batch_size: images per batch over all processes; default
            ``SOLVER.IMS_PER_BATCH`` (smaller with gradient accumulation).

    Returns:
        an iterable of batches (lists of mapped samples), with the :class:`BadSampleLog` of
        this process as ``bad_samples``.
    """
    dicts = _training_dicts(cfg)

    def new_log(announce: bool) -> BadSampleLog:
        return BadSampleLog(
            "training",
            outcome="replaced by another sample; later failures of this file are only counted",
            dataset_size=len(dicts),
            max_fraction=cfg.DATALOADER.MAX_BAD_SAMPLE_FRACTION,
            dataset_names=cfg.DATASETS.TRAIN,
            announce=announce,
        )

    if total_batch_size is None:
        total_batch_size = cfg.SOLVER.IMS_PER_BATCH
    sampler = None  # Detectron2's choice by DATALOADER.SAMPLER_TRAIN
    if cfg.DATALOADER.SAMPLER_TRAIN == REPEAT_FACTOR_SAMPLER:  # also for panoptic, semantic
        ignore_label = MaskFormerMapperBase.ignore_label_from_config(cfg, is_train=True)
        sampler = build_repeat_factor_sampler(cfg, dicts, ignore_label)
    loader = build_detection_train_loader(
        cfg,
        mapper=_ReplaceBadSamples(mapper, new_log(announce=False)),
        dataset=dicts,
        sampler=sampler,
        total_batch_size=total_batch_size,
    )
    return SkipBadSamplesTrainLoader(loader, new_log(announce=True))


def build_test_loader(
    cfg: CfgNode, dataset_name: str, mapper: Optional[Callable[[Dict], Dict]] = None
) -> SkipBadImagesTestLoader:
    """Detectron2's inference loader over ``dataset_name`` that leaves bad images out and
    reports them (see the module docstring).

    Args:
        cfg: the full config.
        dataset_name: a registered data set.
        mapper: the dataset mapper; default Detectron2's ``DatasetMapper(cfg, False)``, as in
            ``build_detection_test_loader``.
    """
    metadata = MetadataCatalog.get(dataset_name)
    classes = metadata.get("stuff_classes", None)
    mapper = _CheckGroundTruth(
        DatasetMapper(cfg, False) if mapper is None else mapper,
        num_semantic_classes=None if classes is None else len(classes),
        ignore_label=metadata.get("ignore_label", None),
    )
    loader = build_detection_test_loader(cfg, dataset_name, mapper=MarkBadSamples(mapper))
    log = BadSampleLog(
        f"evaluation on {dataset_name}",
        outcome="left out of the metrics",
        dataset_size=len(loader.dataset),
        max_fraction=cfg.DATALOADER.MAX_BAD_SAMPLE_FRACTION,
        dataset_names=[dataset_name],
    )
    return SkipBadImagesTestLoader(loader, log)
