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
(:mod:`mask2former.engine.boundary_ap`, ``TEST.BOUNDARY_AP``).
"""

import json
import os
import tempfile
from typing import Any, Dict, List, Optional, Set

from detectron2.data.catalog import Metadata
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from .boundary_ap import COCO_METRICS, check_dilation_ratio, evaluate_mask_ap

__all__ = ["PartialCOCOEvaluator", "PartialCOCOPanopticEvaluator"]


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


class PartialCOCOPanopticEvaluator(COCOPanopticEvaluator):
    """``COCOPanopticEvaluator`` that scores only the images it processed (see the module
    docstring)."""

    def evaluate(self):
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
