#!/usr/bin/env python
"""Score saved semantic segmentation predictions with panoptic quality (PQ^St).

MaskFormer and Mask2Former report PQ^St for semantic models: each class present in an image
is one segment, in the ground truth and in the prediction, and COCO's panoptic rules score
them (:mod:`mask2former.engine.semantic_pq`). Unlike mIoU, it counts a class predicted where
it is absent, or missed where it is present, as a whole error, however few its pixels.

The predictions are the ``OUTPUT_DIR/inference/sem_seg_predictions.json`` that Detectron2's
``SemSegEvaluator`` writes during ``train_net.py --eval-only`` (one RLE mask per image and
class); the ground truth is the semantic PNG of each image of ``--dataset-name``, any
registered semantic data set (``ade20k_sem_seg_val``, ``ade20k_full_sem_seg_val``,
``coco_2017_test_stuff_10k_sem_seg``, your own with ``--import``). Images of the data set
without predictions are left out, and counted in the output.

Example:
    python tools/evaluate_pq_for_semantic_segmentation.py --dataset-name ade20k_sem_seg_val \\
        --json-file output/inference/sem_seg_predictions.json

Prints PQ, SQ and RQ, then the figures (with each class's PQ) as JSON.
"""

import argparse
import math
import os
import sys
import warnings
from collections import defaultdict
from typing import Any, Dict, List, Optional

import numpy as np

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

import pycocotools.mask as mask_utils  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from PIL import Image  # noqa: E402

from mask2former import data as _data  # noqa: E402, F401  registers the data sets
from mask2former.data.check import (  # noqa: E402
    add_import_argument,
    import_registrations,
    unregistered_dataset_message,
)
from mask2former.data.datasets.catalog_utils import DatasetFilesMissingError  # noqa: E402
from mask2former.engine.semantic_pq import SemanticPQ  # noqa: E402
from mask2former.utils.figures_io import (  # noqa: E402
    InputError,
    check_output_file,
    read_json_file,
    write_figures,
)


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset-name",
        required=True,
        help="registered semantic data set, e.g. ade20k_sem_seg_val",
    )
    parser.add_argument(
        "--json-file", required=True, help="sem_seg_predictions.json written by SemSegEvaluator"
    )
    parser.add_argument("--output", help="also write the JSON figures to this file")
    add_import_argument(parser)
    return parser


def read_predictions(json_file: str) -> Dict[str, List[Dict[str, Any]]]:
    """The predictions of ``json_file`` by normalised image path."""
    predictions = read_json_file(json_file, "predictions file")
    if not isinstance(predictions, list):
        raise InputError(
            f"predictions file {json_file!r} is not SemSegEvaluator's sem_seg_predictions.json "
            "(a JSON list of {file_name, category_id, segmentation})"
        )
    by_image = defaultdict(list)
    for index, prediction in enumerate(predictions):
        missing = {"file_name", "category_id", "segmentation"} - set(prediction)
        if missing:
            raise InputError(
                f"predictions file {json_file!r}: entry {index} lacks {sorted(missing)}"
            )
        by_image[os.path.normpath(prediction["file_name"])].append(prediction)
    return by_image


def read_ground_truth(path: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image, dtype=np.int64)
    except (OSError, ValueError) as error:
        raise InputError(f"the semantic PNG {path!r} cannot be read ({error})") from error


def prediction_map(
    predictions: List[Dict[str, Any]],
    shape,
    to_contiguous: Optional[Dict[int, int]],
    num_classes: int,
    where: str,
) -> np.ndarray:
    """(H, W) class ids from one image's per-class RLE masks; -1 where none covers a pixel."""
    labels = np.full(shape, -1, dtype=np.int64)
    for prediction in predictions:
        category_id = prediction["category_id"]
        label = to_contiguous.get(category_id) if to_contiguous else category_id
        if label is None or not 0 <= label < num_classes:
            raise InputError(
                f"{where}: a prediction has category_id {category_id!r}, which is not a class "
                "of the data set; are these the predictions for this data set?"
            )
        mask = mask_utils.decode(prediction["segmentation"]).astype(bool)
        if mask.shape != tuple(shape):
            raise InputError(
                f"{where}: a prediction mask is {mask.shape[1]}x{mask.shape[0]} pixels, its "
                f"semantic PNG {shape[1]}x{shape[0]}"
            )
        labels[mask] = label
    return labels


def evaluate(dataset_name: str, json_file: str) -> Dict[str, Any]:
    """PQ^St of the predictions in ``json_file`` on the images of ``dataset_name``."""
    problem = unregistered_dataset_message(dataset_name)
    if problem:
        raise InputError(problem)
    metadata = MetadataCatalog.get(dataset_name)
    class_names = metadata.get("stuff_classes")
    if not class_names:
        raise InputError(
            f"data set {dataset_name!r} has no stuff_classes in its metadata: not a semantic "
            "segmentation data set"
        )
    predictions = read_predictions(json_file)
    records = [r for r in DatasetCatalog.get(dataset_name) if "sem_seg_file_name" in r]
    if not records:
        raise InputError(f"data set {dataset_name!r} has no semantic PNGs (sem_seg_file_name)")
    to_contiguous = metadata.get("stuff_dataset_id_to_contiguous_id", None)
    pq = SemanticPQ(len(class_names), metadata.get("ignore_label", None))
    known = set()
    for record in records:
        key = os.path.normpath(record["file_name"])
        known.add(key)
        if key not in predictions:
            continue
        ground_truth = read_ground_truth(record["sem_seg_file_name"])
        where = f"image {record['file_name']}"
        labels = prediction_map(
            predictions[key], ground_truth.shape, to_contiguous, len(class_names), where
        )
        try:
            pq.add(ground_truth, labels, where=where)
        except ValueError as error:
            raise InputError(str(error)) from error
    unknown = sorted(set(predictions) - known)
    if unknown:
        raise InputError(
            f"predictions file {json_file!r} has predictions for {len(unknown)} images that are "
            f"not in data set {dataset_name!r}, such as {unknown[0]}; are these the predictions "
            "for this data set?"
        )
    return {
        "dataset": dataset_name,
        "json_file": json_file,
        "images": pq.images,
        "images_without_predictions": len(records) - pq.images,
        **pq.results(class_names),
    }


def format_table(figures: Dict[str, Any]) -> str:
    def cell(value: float) -> str:
        return "nan" if math.isnan(value) else f"{value:.2f}"

    return "\n".join(
        [
            f"{figures['dataset']}: {figures['images']} images "
            f"({figures['images_without_predictions']} without predictions, left out)",
            "| | PQ | SQ | RQ | classes |",
            "|---|---|---|---|---|",
            f"| all (stuff) | {cell(figures['PQ'])} | {cell(figures['SQ'])} | "
            f"{cell(figures['RQ'])} | {figures['classes']} |",
        ]
    )


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    try:
        check_output_file(args.output)
        import_registrations(args.imports)
        figures = evaluate(args.dataset_name, args.json_file)
    except (InputError, DatasetFilesMissingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(figures))
    print(write_figures(figures, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
