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

Examples:
    python tools/visualize_data.py --source annotation --output-dir vis/ \\
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml
    python tools/visualize_data.py --source dataloader --num-images 8 --output-dir vis/ \\
        --config-file configs/shapes/maskformer2_R18_panoptic.yaml
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
from mask2former.data.dataset_mappers.build import build_dataset_mapper  # noqa: E402
from mask2former.utils.atomic_io import atomic_open  # noqa: E402
from mask2former.utils.image_io import ImageReadError, read_image  # noqa: E402
from mask2former.utils.visualization import (  # noqa: E402
    ANNOTATION_KEYS,
    annotation_tasks,
    display_metadata,
    draw_annotations,
    draw_training_sample,
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
    parser.add_argument("--num-images", type=int, default=20, help="per data set (default 20)")
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
    stem = os.path.splitext(os.path.basename(file_name))[0]
    return os.path.join(output_dir, dataset, f"{index:05d}_{stem}.jpg")


def draw_dataset(cfg, args, dataset: str) -> Tuple[int, List[BadSample]]:
    """Draw the first ``--num-images`` images of ``dataset``; returns the number of pictures
    written and the bad samples met."""
    records = get_detection_dataset_dicts(
        [dataset],
        filter_empty=args.source == "dataloader" and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
    )[: args.num_images]
    metadata = MetadataCatalog.get(dataset)
    os.makedirs(os.path.join(args.output_dir, dataset), exist_ok=True)
    bad: List[BadSample] = []
    written = 0
    if args.source == "annotation":
        for index, record in enumerate(records):
            tasks = annotation_tasks(record)
            task = tasks[0] if args.task == "auto" and tasks else args.task
            if task not in tasks:
                raise UsageError(
                    f"data set {dataset!r} has no {task} ground truth in "
                    f"{record['file_name']} (it has: {', '.join(tasks) or 'none'}); pick "
                    "another --task"
                )
            try:
                image = read_image(record["file_name"], "RGB")
                picture = draw_annotations(image, record, task, metadata)
            # an unreadable image or label PNG, or an annotation that does not fit the image
            except (ImageReadError, OSError, ValueError, IndexError) as error:
                bad.append(BadSample.from_error(record, error))
                continue
            _save(picture, _picture_path(args.output_dir, dataset, index, record["file_name"]))
            written += 1
        return written, bad
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
    return written, bad


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
    for dataset, (written, bad) in results.items():
        folder = os.path.join(args.output_dir, dataset)
        logger.info("%s: %d pictures in %s", dataset, written, folder)
        for sample in bad:
            logger.warning("  skipped %s: %s", sample.file_name, sample.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
