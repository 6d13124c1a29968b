#!/usr/bin/env python
"""Draw a data set's ground truth, or the training samples made from it, to check a data set
and its augmentation before a long run.

As Detectron2's tool of that name, for Mask2Former configs:

- ``--source annotation``: each image with one task's ground truth as the data set holds it
  (panoptic segments, instances, or the semantic map; ``--task``, default the most complete
  the data set has);
- ``--source dataloader``: each image as the model trains on it: the config's training dataset
  mapper (``INPUT.DATASET_MAPPER_NAME``: crops, large-scale jittering, flips, padding) and the
  targets it makes (one mask per segment or instance, with its class), the pixels of the
  ignore label in white and the padding in black. ``--seed`` fixes the augmentation.

The data sets are ``DATASETS.TRAIN`` unless ``--dataset`` names one; the first
``--num-images`` images of each are drawn into ``--output-dir/<data set>/``. An image that
cannot be read or mapped is reported and skipped, as training would.

A video data set (YouTube-VIS style, e.g. ``shapes_video_train``, ``ytvis_2019_train``) is drawn
one picture per frame, the frames of the ``i``-th video in ``--output-dir/<data set>/
<i>_<video folder>/<t>_<frame>.jpg``, each object in one colour in every frame:

- ``--source annotation``: every frame of the video with its instances (class and track id);
- ``--source dataloader``: the clip that the video mapper samples (INPUT.SAMPLING_FRAME_NUM
  frames, augmented alike), with the target masks of the instances present in each frame; it
  needs a video config (``MODEL.META_ARCHITECTURE`` "VideoMaskFormer").

``--num-images`` then counts videos.

Examples:
    python tools/visualize_data.py --source annotation --output-dir vis/ \\
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml
    python tools/visualize_data.py --source dataloader --num-images 8 --output-dir vis/ \\
        --config-file configs/shapes/maskformer2_R18_panoptic.yaml
    python tools/visualize_data.py --source dataloader --num-images 4 --output-dir vis/ \\
        --config-file configs/shapes/video_maskformer2_R18.yaml
"""

import argparse
import logging
import os
import sys
import warnings
from typing import List, Tuple

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from detectron2.data import MetadataCatalog, get_detection_dataset_dicts  # noqa: E402
from detectron2.data.build import filter_images_with_only_crowd_annotations  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from PIL import Image  # noqa: E402

from mask2former import data as _data  # noqa: E402, F401  registers the data sets
from mask2former.config import UnknownConfigKeyError, add_opts_argument, load_config  # noqa: E402
from mask2former.data.bad_samples import BadSample, MarkBadSamples  # noqa: E402
from mask2former.data.check import (  # noqa: E402
    add_import_argument,
    import_registrations,
    unregistered_dataset_message,
)
from mask2former.data.dataset_mappers.build import (  # noqa: E402
    build_dataset_mapper,
    is_video_config,
)
from mask2former.data.records import (  # noqa: E402
    is_video_record,
    record_path,
    video_has_annotations,
)
from mask2former.utils.atomic_io import atomic_open  # noqa: E402
from mask2former.utils.image_io import ImageReadError, read_image  # noqa: E402
from mask2former.utils.visualization import (  # noqa: E402
    ANNOTATION_KEYS,
    annotation_tasks,
    display_metadata,
    draw_annotations,
    draw_training_sample,
    draw_video_annotations,
    draw_video_training_sample,
    video_track_ids,
)

logger = logging.getLogger("visualize_data")


class UsageError(ValueError):
    """The command line asks for something the config or data set does not have."""


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--source", choices=["annotation", "dataloader"], required=True)
    parser.add_argument("--output-dir", required=True, help="where the pictures are written")
    parser.add_argument("--dataset", help="a registered data set (default: DATASETS.TRAIN)")
    parser.add_argument(
        "--num-images",
        type=int,
        default=20,
        help="per data set, videos of a video one (default 20)",
    )
    parser.add_argument(
        "--task",
        choices=["auto", *ANNOTATION_KEYS],
        default="auto",
        help="--source annotation: the ground truth to draw (default: the most complete)",
    )
    parser.add_argument("--seed", type=int, default=0, help="--source dataloader: augmentation")
    add_import_argument(parser)
    add_opts_argument(parser)
    return parser


def _save(picture, path: str) -> None:
    with atomic_open(path, "wb") as f:
        Image.fromarray(picture).save(f, format="JPEG", quality=92)


def _picture_path(output_dir: str, dataset: str, index: int, file_name: str) -> str:
    """``output_dir/dataset/<index>_<file stem>.jpg``; without ".jpg", a video's folder."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    return os.path.join(output_dir, dataset, f"{index:05d}_{stem}.jpg")


def _save_frames(pictures, frame_files: List[str], folder: str) -> None:
    """A video's pictures as ``folder/<t>_<frame>.jpg`` (``t``: position in the clip)."""
    for position, (picture, frame_file) in enumerate(zip(pictures, frame_files)):
        stem = os.path.splitext(os.path.basename(frame_file))[0]
        _save(picture, os.path.join(folder, f"{position:03d}_{stem}.jpg"))


def _check_task(task: str, record, dataset: str) -> str:
    """``--task`` for ``record`` (``auto``: its most complete ground truth)."""
    tasks = annotation_tasks(record)
    task = tasks[0] if task == "auto" and tasks else task
    if task not in tasks:
        raise UsageError(
            f"data set {dataset!r} has no {task} ground truth in {record_path(record)} (it has: "
            f"{', '.join(tasks) or 'none'}); pick another --task"
        )
    return task


def _check_model_takes(cfg, args, dataset: str, video: bool) -> None:
    """--source dataloader: the config's mapper must take the data set's samples."""
    if video == is_video_config(cfg):
        return
    architecture = cfg.MODEL.META_ARCHITECTURE
    if video:
        raise UsageError(
            f"data set {dataset!r} holds videos, but {args.config_file} is an image model "
            f"({architecture}): --source dataloader needs a video config (VideoMaskFormer, e.g. "
            "configs/shapes/video_maskformer2_R18.yaml); --source annotation draws any data set"
        )
    raise UsageError(
        f"{args.config_file} is a video model ({architecture}), whose mapper takes videos, but "
        f"data set {dataset!r} holds images: name a video data set with --dataset, or use an "
        "image config"
    )


def _training_records(cfg, args, dataset: str) -> List[dict]:
    """The first ``--num-images`` dataset dicts, less those training leaves out when
    DATALOADER.FILTER_EMPTY_ANNOTATIONS is on (--source dataloader)."""
    records = get_detection_dataset_dicts([dataset], filter_empty=False)
    if args.source == "dataloader" and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        if is_video_record(records[0]):
            records = [record for record in records if video_has_annotations(record)]
        elif "annotations" in records[0]:
            records = filter_images_with_only_crowd_annotations(records)
    return records[: args.num_images]


def draw_video_dataset(cfg, args, dataset: str, records: List[dict]) -> Tuple[int, List[BadSample]]:
    """Draw the first ``--num-images`` videos of ``dataset``, a picture per frame; returns
    the number of videos drawn and the bad samples met."""
    metadata = MetadataCatalog.get(dataset)
    bad: List[BadSample] = []
    written = 0
    if args.source == "dataloader":
        mapper = MarkBadSamples(build_dataset_mapper(cfg, is_train=True))
        model_classes = display_metadata(metadata, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    for index, record in enumerate(records):
        folder = os.path.splitext(
            _picture_path(args.output_dir, dataset, index, record_path(record))
        )[0]
        if args.source == "annotation":
            _check_task(args.task, record, dataset)
            tracks = video_track_ids(record)
            try:
                pictures = [
                    draw_video_annotations(read_image(path, "RGB"), frame, tracks, metadata)
                    for path, frame in zip(record["file_names"], record["annotations"])
                ]
            # an unreadable frame, or an annotation that does not fit the frame
            except (ImageReadError, OSError, ValueError, IndexError) as error:
                bad.append(BadSample.from_error(record, error))
                continue
            frame_files = record["file_names"]
        else:
            sample = mapper(record)
            if isinstance(sample, BadSample):
                bad.append(sample)
                continue
            pictures = draw_video_training_sample(sample, model_classes, cfg.INPUT.FORMAT)
            frame_files = sample["file_names"]
        os.makedirs(folder, exist_ok=True)
        _save_frames(pictures, frame_files, folder)
        written += 1
    return written, "videos (a folder of frames each)", bad


def draw_dataset(cfg, args, dataset: str) -> Tuple[int, str, List[BadSample]]:
    """Draw the first ``--num-images`` images (videos) of ``dataset``; returns the number of
    pictures (videos) written, what they are, and the bad samples met."""
    records = _training_records(cfg, args, dataset)
    video = is_video_record(records[0])
    if args.source == "dataloader":
        _check_model_takes(cfg, args, dataset, video)
    os.makedirs(os.path.join(args.output_dir, dataset), exist_ok=True)
    if video:
        return draw_video_dataset(cfg, args, dataset, records)
    metadata = MetadataCatalog.get(dataset)
    bad: List[BadSample] = []
    written = 0
    if args.source == "annotation":
        for index, record in enumerate(records):
            task = _check_task(args.task, record, dataset)
            try:
                image = read_image(record["file_name"], "RGB")
                picture = draw_annotations(image, record, task, metadata)
            # an unreadable image or label PNG, or an annotation that does not fit the image
            except (ImageReadError, OSError, ValueError, IndexError) as error:
                bad.append(BadSample.from_error(record, error))
                continue
            _save(picture, _picture_path(args.output_dir, dataset, index, record["file_name"]))
            written += 1
        return written, "pictures", bad
    mapper = MarkBadSamples(build_dataset_mapper(cfg, is_train=True))
    ignore_label = metadata.get("ignore_label", None)
    # the targets' classes are the model's
    model_classes = display_metadata(metadata, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    for index, record in enumerate(records):
        sample = mapper(record)
        if isinstance(sample, BadSample):
            bad.append(sample)
            continue
        if sample is None:  # the mapper dropped it (e.g. no annotation left)
            logger.info("%s: the mapper returns no sample", record["file_name"])
            continue
        picture = draw_training_sample(sample, model_classes, cfg.INPUT.FORMAT, ignore_label)
        _save(picture, _picture_path(args.output_dir, dataset, index, record["file_name"]))
        written += 1
    return written, "pictures", bad


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.num_images < 1:
        print("error: --num-images must be at least 1", file=sys.stderr)
        return 2
    try:
        import_registrations(args.imports)
        cfg = load_config(args.config_file, args.opts)
        datasets = [args.dataset] if args.dataset else list(cfg.DATASETS.TRAIN)
        for dataset in datasets:
            problem = unregistered_dataset_message(dataset)
            if problem:
                raise UsageError(problem)
        seed_all_rng(args.seed)
        results = {dataset: draw_dataset(cfg, args, dataset) for dataset in datasets}
    # a missing config file or data set folder, an unknown key or data set, a missing task
    except (UnknownConfigKeyError, FileNotFoundError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for dataset, (written, what, bad) in results.items():
        folder = os.path.join(args.output_dir, dataset)
        logger.info("%s: %d %s in %s", dataset, written, what, folder)
        for sample in bad:
            logger.warning("  skipped %s: %s", sample.file_name, sample.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
