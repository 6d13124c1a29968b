"""COCO evaluators that score only the images they were given.

The evaluation loader leaves bad images out (:mod:`mask2former.data.bad_samples`), among them
those whose semantic or panoptic PNG is missing or unreadable. Detectron2's ``COCOEvaluator``
would still score every image of the annotation file, counting the objects of a left-out image
as missed, and ``COCOPanopticEvaluator`` would fail, since panopticapi wants a prediction for
every ground-truth image. These subclasses restrict the ground truth to the
images that were evaluated; when every image was, they are Detectron2's evaluators unchanged.
(``SemSegEvaluator`` only ever scores the images it is given. The LVIS and Cityscapes
evaluators are left as they are: LVIS counts a left-out image's objects as missed, and the
Cityscapes scripts stop when an image has no prediction.)

Both contain a collective call in ``evaluate``, which, as in Detectron2, every process must
make.

``PartialCOCOEvaluator`` also scores boundary AP when given ``boundary_dilation_ratio``
(:mod:`mask2former.engine.boundary_ap`, ``TEST.BOUNDARY_AP``); ``PartialCOCOPanopticEvaluator``
also reports each class's PQ.
"""

import contextlib
import json
import logging
import math
import os
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Set

from detectron2.data.catalog import Metadata
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table
from tabulate import tabulate

from .boundary_ap import COCO_METRICS, check_dilation_ratio, evaluate_mask_ap

__all__ = ["PartialCOCOEvaluator", "PartialCOCOPanopticEvaluator", "per_class_pq"]


def _evaluated_image_ids(predictions: List[Dict[str, Any]], *, distributed: bool) -> Set[Any]:
    """Image ids of the predictions, of all processes when ``distributed`` (then a collective
    call)."""
    image_ids = {prediction["image_id"] for prediction in predictions}
    if distributed and comm.get_world_size() > 1:
        image_ids = set().union(*comm.all_gather(image_ids))
    return image_ids


class PartialCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` that scores only the images it processed (see the module docstring).

    With ``boundary_dilation_ratio``, the results also hold "boundary": boundary AP with that
    dilation ratio, under the metric names of "segm", whenever masks are evaluated.
    """

    def __init__(self, *args, boundary_dilation_ratio: Optional[float] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if boundary_dilation_ratio is not None:
            check_dilation_ratio(boundary_dilation_ratio)  # here, not when evaluating
        self._boundary_dilation_ratio = boundary_dilation_ratio

    def evaluate(self, img_ids=None):
        """Like ``COCOEvaluator.evaluate``; ``img_ids`` defaults to the processed images when
        some images of the annotation file were not processed."""
        if img_ids is None:
            evaluated = _evaluated_image_ids(self._predictions, distributed=self._distributed)
            if set(self._coco_api.getImgIds()) - evaluated:
                img_ids = sorted(evaluated)
        return super().evaluate(img_ids)

    def _eval_predictions(self, predictions, img_ids=None):
        # copied before COCOEvaluator replaces their category ids by the annotation file's
        instances = [dict(x) for prediction in predictions for x in prediction["instances"]]
        super()._eval_predictions(predictions, img_ids=img_ids)
        tasks = self._tasks or self._tasks_from_predictions(instances)
        if self._boundary_dilation_ratio is None or not self._do_evaluation or "segm" not in tasks:
            return
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            to_contiguous = self._metadata.thing_dataset_id_to_contiguous_id
            to_dataset_id = {
                contiguous: dataset_id for dataset_id, contiguous in to_contiguous.items()
            }
            for instance in instances:
                instance["category_id"] = to_dataset_id[instance["category_id"]]
        self._logger.info(
            "Evaluating boundary AP (dilation ratio %g) ...", self._boundary_dilation_ratio
        )
        _, results = evaluate_mask_ap(
            self._coco_api,
            instances,
            boundary_dilation_ratio=self._boundary_dilation_ratio,
            img_ids=img_ids,
            class_names=self._metadata.get("thing_classes"),
        )
        self._logger.info(
            "Evaluation results for boundary: \n"
            + create_small_table({metric: results[metric] for metric in COCO_METRICS})
        )
        self._results["boundary"] = results


@contextlib.contextmanager
def _capturing_pq_stat() -> Iterator[Dict[str, Any]]:
    """While active, panopticapi's ``pq_compute`` leaves its per-class counts (``PQStat``) in
    the yielded dict, under "pq_stat": ``pq_compute`` returns only the per-class PQ, SQ and RQ,
    with 0 for a class that neither the ground truth nor the predictions have."""
    from panopticapi import evaluation as panoptic_evaluation

    captured: Dict[str, Any] = {}
    compute = panoptic_evaluation.pq_compute_multi_core

    def capturing(*args, **kwargs):
        captured["pq_stat"] = compute(*args, **kwargs)
        return captured["pq_stat"]

    panoptic_evaluation.pq_compute_multi_core = capturing
    try:
        yield captured
    finally:
        panoptic_evaluation.pq_compute_multi_core = compute


def per_class_pq(pq_stat, class_names: Dict[int, str]) -> Dict[str, Dict[str, float]]:
    """PQ, SQ and RQ (in %) and the TP, FP and FN counts of each class, by name.

    Args:
        pq_stat: panopticapi's ``PQStat`` of an evaluation.
        class_names: dataset category id -> name, in the order to report.

    Returns:
        name -> {"PQ", "SQ", "RQ", "TP", "FP", "FN"}; PQ, SQ and RQ are NaN for a class with
        neither ground truth nor predictions (as Detectron2 reports per-class AP), SQ is NaN
        without true positives.
    """
    results = {}
    for category_id, name in class_names.items():
        if category_id in pq_stat.pq_per_cat:
            stat = pq_stat.pq_per_cat[category_id]
            iou, tp, fp, fn = stat.iou, stat.tp, stat.fp, stat.fn
        else:
            iou, tp, fp, fn = 0.0, 0, 0, 0
        denominator = tp + 0.5 * fp + 0.5 * fn
        results[name] = {
            "PQ": 100 * iou / denominator if denominator else math.nan,
            "SQ": 100 * iou / tp if tp else math.nan,
            "RQ": 100 * tp / denominator if denominator else math.nan,
            "TP": tp,
            "FP": fp,
            "FN": fn,
        }
    return results


class PartialCOCOPanopticEvaluator(COCOPanopticEvaluator):
    """``COCOPanopticEvaluator`` that scores only the images it processed (see the module
    docstring), and also reports each class's PQ ("PQ-{name}", as ``COCOEvaluator`` reports
    "AP-{name}"), logging a per-class table of PQ, SQ, RQ, TP, FP and FN."""

    def evaluate(self):
        with _capturing_pq_stat() as captured:
            results = self._evaluate_processed_images()
        if results is None or "pq_stat" not in captured:
            return results
        per_class = per_class_pq(captured["pq_stat"], self._class_names())
        results["panoptic_seg"].update({f"PQ-{name}": v["PQ"] for name, v in per_class.items()})
        self._log_per_class(per_class)
        return results

    def _class_names(self) -> Dict[int, str]:
        """Dataset category id -> class name, in the contiguous order of the metadata: the
        stuff map and names (which list every class in the COCO-panoptic convention), then any
        thing the stuff map lacks."""

        def named(map_key: str, names_key: str) -> Dict[int, str]:
            to_contiguous = self._metadata.get(map_key, {})
            names = self._metadata.get(names_key, [])
            return {
                dataset_id: names[index] if index < len(names) else f"class {dataset_id}"
                for dataset_id, index in sorted(to_contiguous.items(), key=lambda kv: kv[1])
            }

        things = named("thing_dataset_id_to_contiguous_id", "thing_classes")
        stuff = named("stuff_dataset_id_to_contiguous_id", "stuff_classes")
        return {**stuff, **{k: v for k, v in things.items() if k not in stuff}}

    def _log_per_class(self, per_class: Dict[str, Dict[str, float]]) -> None:
        things = set(self._metadata.get("thing_classes", []))
        rows = [
            [name, "thing" if name in things else "stuff"]
            + [v[key] for key in ("PQ", "SQ", "RQ", "TP", "FP", "FN")]
            for name, v in per_class.items()
        ]
        table = tabulate(
            rows,
            headers=["category", "kind", "PQ", "SQ", "RQ", "TP", "FP", "FN"],
            tablefmt="pipe",
            floatfmt=".3f",
            numalign="right",
        )
        logging.getLogger(__name__).info("Per-category panoptic results:\n" + table)

    def _evaluate_processed_images(self):
        evaluated = _evaluated_image_ids(self._predictions, distributed=True)
        if not comm.is_main_process():
            return super().evaluate()
        with open(self._metadata.panoptic_json) as f:
            ground_truth = json.load(f)
        annotations = ground_truth["annotations"]
        if all(annotation["image_id"] in evaluated for annotation in annotations):
            return super().evaluate()
        ground_truth["annotations"] = [a for a in annotations if a["image_id"] in evaluated]
        ground_truth["images"] = [i for i in ground_truth["images"] if i["id"] in evaluated]
        metadata = self._metadata
        with tempfile.TemporaryDirectory(prefix="panoptic_gt") as folder:
            panoptic_json = os.path.join(folder, "evaluated_images.json")
            with open(panoptic_json, "w") as f:
                json.dump(ground_truth, f)
            self._metadata = Metadata(**{**metadata.as_dict(), "panoptic_json": panoptic_json})
            try:
                return super().evaluate()
            finally:
                self._metadata = metadata
