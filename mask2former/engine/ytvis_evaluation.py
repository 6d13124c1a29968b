"""Video instance segmentation evaluation (YouTube-VIS): the submission file and video AP.

:class:`YTVISEvaluator` takes the video model's outputs (one dict per video: "image_size",
"pred_scores", "pred_labels" (contiguous), "pred_masks" (L, height, width) bool) and writes
``results.json`` in the YouTube-VIS submission format: a list of ``{"video_id", "score",
"category_id" (the data set's id), "segmentations": [per frame an RLE with "counts" a str, or
null where the mask is empty]}``. The official val and test splits have no ground truth: that
file, zipped, is what the challenge server scores. Where the data set has ground truth, it also
reports video AP.

Video AP is COCO's AP (IoU thresholds .50:.05:.95, 101 recall points, maxDets 1/10/100) over
videos instead of images, with

- the spatio-temporal IoU of a detection d and an object g: ``sum_t |d_t ∩ g_t| / sum_t
  |d_t ∪ g_t|`` over the frames (a frame where neither is present adds nothing); for a crowd
  object, as in COCO, ``sum_t |d_t ∩ g_t| / sum_t |d_t|``, and crowd objects are ignored;
- an object's area the mean of its per-frame areas over the frames where it is present, in
  the area ranges all [0, 1e10], small [0, 128^2], medium [128^2, 256^2], large [256^2, 1e10].

These are the definitions of the YouTube-VIS evaluation API.
"""

import contextlib
import io
import itertools
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.fast_eval_api import COCOeval_opt
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table
from pycocotools.coco import COCO

from ..utils.export import encode_video_masks
from .boundary_ap import pairs_to_score, summarize_coco_eval

__all__ = [
    "VideoCOCOeval",
    "YTVISEvaluator",
    "encode_video_masks",
    "evaluate_video_ap",
    "video_ground_truth",
    "video_mask_iou",
]

logger = logging.getLogger(__name__)

# The area ranges of the YouTube-VIS evaluation (all, small, medium, large), in pixels.
YTVIS_AREA_RANGES = [[0, 1e10], [0, 128**2], [128**2, 256**2], [256**2, 1e10]]
# COCOeval.stats[6:8], the recalls the YouTube-VIS leaderboard reports besides AP.
_RECALL_METRICS = ("AR1", "AR10")

# One video's per-frame masks: an RLE per frame, None where the mask is empty or absent.
VideoRLEs = Sequence[Optional[Dict[str, Any]]]


def _total_areas(videos: Sequence[VideoRLEs], frame: int, total: np.ndarray) -> List[int]:
    """Add the areas of ``frame`` to ``total``; return the indices present in that frame."""
    present = [i for i, video in enumerate(videos) if video[frame] is not None]
    if present:
        total[present] += mask_util.area([videos[i][frame] for i in present])
    return present


def video_mask_iou(
    detections: Sequence[VideoRLEs], objects: Sequence[VideoRLEs], iscrowd: Sequence[int]
) -> np.ndarray:
    """Spatio-temporal IoU of every detection with every object (see the module docstring).

    Args:
        detections: D videos of L per-frame RLEs (None where absent).
        objects: G videos of L per-frame RLEs (None where absent).
        iscrowd: G flags; a crowd object's IoU is the fraction of the detection inside it.

    Returns:
        (D, G) float64 IoUs; 0 where the union is empty.

    Raises:
        ValueError: the videos differ in length.
    """
    lengths = {len(video) for video in itertools.chain(detections, objects)}
    if len(lengths) > 1:
        raise ValueError(f"Video masks of different lengths {sorted(lengths)} cannot be compared.")
    num_dt, num_gt = len(detections), len(objects)
    if num_dt == 0 or num_gt == 0:
        return np.zeros((num_dt, num_gt))
    intersection = np.zeros((num_dt, num_gt))
    dt_area, gt_area = np.zeros(num_dt), np.zeros(num_gt)
    for frame in range(lengths.pop()):
        frame_dt_area, frame_gt_area = np.zeros(num_dt), np.zeros(num_gt)
        dt_present = _total_areas(detections, frame, frame_dt_area)
        gt_present = _total_areas(objects, frame, frame_gt_area)
        dt_area += frame_dt_area
        gt_area += frame_gt_area
        if not dt_present or not gt_present:
            continue
        iou = mask_util.iou(
            [detections[i][frame] for i in dt_present],
            [objects[j][frame] for j in gt_present],
            [0] * len(gt_present),
        )
        iou = np.nan_to_num(np.asarray(iou, dtype=np.float64))
        # |d ∩ g| from the IoU: iou = i / (a_d + a_g - i)  =>  i = iou (a_d + a_g) / (1 + iou)
        sums = frame_dt_area[dt_present][:, None] + frame_gt_area[gt_present][None, :]
        intersection[np.ix_(dt_present, gt_present)] += np.rint(iou * sums / (1 + iou))
    union = dt_area[:, None] + gt_area[None, :] - intersection
    crowd = np.asarray(iscrowd, dtype=bool)
    union[:, crowd] = np.broadcast_to(dt_area[:, None], (num_dt, num_gt))[:, crowd]
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def _mean_area(rles: VideoRLEs) -> float:
    """Mean area of the frames where the mask is present (0 when it never is)."""
    areas = [float(mask_util.area(rle)) for rle in rles if rle is not None]
    areas = [area for area in areas if area > 0]
    return float(np.mean(areas)) if areas else 0.0


class _VideoCOCO(COCO):
    """A pycocotools ``COCO`` over videos: an "image" is a video and an annotation's mask is
    its list of per-frame RLEs ("segmentations"), which ``annToRLE`` returns as it is."""

    def __init__(self, dataset: Dict):
        super().__init__()
        self.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            self.createIndex()

    def annToRLE(self, ann):  # noqa: N802 (pycocotools' name)
        return ann["segmentations"]


class VideoCOCOeval(COCOeval_opt):
    """COCO segmentation evaluation over videos (Detectron2's fast ``COCOeval_opt``) with the
    spatio-temporal IoU and the area ranges of YouTube-VIS.

    Built from ``COCO`` objects whose images are videos and whose annotations hold
    "segmentations" (L per-frame RLEs or None) and "area" (the mean present area):
    :func:`evaluate_video_ap` makes them.
    """

    def __init__(self, coco_gt: COCO, coco_dt: COCO):
        super().__init__(coco_gt, coco_dt, "segm")
        self.params.areaRng = [list(r) for r in YTVIS_AREA_RANGES]

    def computeIoU(self, imgId, catId):  # noqa: N802 (pycocotools' name)
        gt, dt = pairs_to_score(self, imgId, catId)
        if not gt and not dt:
            return []
        return video_mask_iou(
            [d["segmentation"] for d in dt],
            [g["segmentation"] for g in gt],
            [int(g["iscrowd"]) for g in gt],
        )


def video_ground_truth(dataset_dicts: Sequence[Dict], contiguous_to_id: Dict[int, int]) -> Dict:
    """COCO-style ground truth over videos from dataset dicts of
    :func:`~mask2former.data.datasets.ytvis.load_ytvis_json`: one "image" per video, one
    annotation per track with "segmentations" (per-frame RLE or None), "area" (mean present
    area), "iscrowd" and "category_id" (the data set's id)."""
    images, annotations = [], []
    for record in dataset_dicts:
        height, width, length = record["height"], record["width"], record["length"]
        images.append({"id": record["video_id"], "height": height, "width": width})
        tracks: Dict[int, Dict] = {}
        for frame, frame_annotations in enumerate(record["annotations"]):
            for ann in frame_annotations:
                track = tracks.setdefault(
                    ann["id"],
                    {
                        "image_id": record["video_id"],
                        "category_id": contiguous_to_id[ann["category_id"]],
                        "iscrowd": int(ann.get("iscrowd", 0)),
                        "segmentations": [None] * length,
                    },
                )
                track["segmentations"][frame] = _to_rle(ann["segmentation"], height, width)
        for track in tracks.values():
            track["area"] = _mean_area(track["segmentations"])
            track["id"] = len(annotations) + 1
            annotations.append(track)
    return {"images": images, "annotations": annotations}


def _to_rle(segmentation, height: int, width: int) -> Dict:
    if isinstance(segmentation, list):
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    return segmentation


def evaluate_video_ap(
    ground_truth: Dict,
    results: Sequence[Dict],
    category_ids: Sequence[int],
    *,
    video_ids: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
) -> Tuple[Optional[VideoCOCOeval], Dict[str, float]]:
    """Video AP of submission-format ``results`` against :func:`video_ground_truth`.

    Args:
        ground_truth: {"images": videos, "annotations": tracks}.
        results: dicts with "video_id", "score", "category_id" (data set id), "segmentations".
        category_ids: the data set's category ids.
        video_ids: the videos to score; default all of ``ground_truth``.
        class_names: names for per-class AP, in increasing category id order.

    Returns:
        the evaluated :class:`VideoCOCOeval` (None without results) and AP, AP50, AP75, APs,
        APm, APl, AR1, AR10 (in %) and ``AP-<class>``.
    """
    categories = [{"id": i} for i in sorted(category_ids)]
    if not results:
        logger.warning("No video predictions: video AP is NaN.")
        per_class = {f"AP-{name}": math.nan for name in class_names or ()}
        metrics = {**summarize_coco_eval(None), **dict.fromkeys(_RECALL_METRICS, math.nan)}
        return None, {**metrics, **per_class}
    coco_gt = _VideoCOCO({**ground_truth, "categories": categories})
    detections = [
        {
            **result,
            "id": index + 1,
            "image_id": result["video_id"],
            "area": _mean_area(result["segmentations"]),
            "iscrowd": 0,
        }
        for index, result in enumerate(results)
    ]
    coco_dt = _VideoCOCO(
        {"images": ground_truth["images"], "annotations": detections, "categories": categories}
    )
    coco_eval = VideoCOCOeval(coco_gt, coco_dt)
    if video_ids is not None:
        coco_eval.params.imgIds = sorted(video_ids)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    metrics = summarize_coco_eval(coco_eval)
    for name, value in zip(_RECALL_METRICS, coco_eval.stats[6:8]):
        metrics[name] = float(value * 100) if value >= 0 else math.nan
    per_class = summarize_coco_eval(coco_eval, class_names)
    return coco_eval, {**metrics, **{k: v for k, v in per_class.items() if k.startswith("AP-")}}


class YTVISEvaluator(DatasetEvaluator):
    """YouTube-VIS evaluation of a registered video data set (see the module docstring).

    ``evaluate`` writes ``{output_dir}/results.json`` and returns ``{"segm": {AP, AP50, AP75,
    APs, APm, APl, AR1, AR10, AP-<class>}}`` when the data set has ground truth, ``{}`` when it
    has none. Only the videos that were processed are scored (the evaluation loader leaves
    unreadable ones out). ``evaluate`` is a collective call when ``distributed``.
    """

    def __init__(
        self, dataset_name: str, output_dir: Optional[str] = None, *, distributed: bool = True
    ):
        """
        Args:
            dataset_name: a registered data set of dataset dicts in the format of
                :func:`~mask2former.data.datasets.ytvis.load_ytvis_json`, whose metadata has
                ``thing_dataset_id_to_contiguous_id``.
            output_dir: folder of ``results.json``; None writes no file.
            distributed: gather the predictions of all processes, evaluate on the main one.
        """
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._metadata = MetadataCatalog.get(dataset_name)
        id_map = self._metadata.thing_dataset_id_to_contiguous_id
        self._contiguous_to_id = {contiguous: i for i, contiguous in id_map.items()}
        self.reset()

    def reset(self) -> None:
        self._predictions: List[Dict] = []
        self._video_ids: List[int] = []

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        """Take one batch: inputs with "video_id", outputs of the video model (format above)."""
        for inp, out in zip(inputs, outputs):
            video_id = inp["video_id"]
            self._video_ids.append(video_id)
            for score, label, masks in zip(
                out["pred_scores"], out["pred_labels"], out["pred_masks"]
            ):
                self._predictions.append(
                    {
                        "video_id": video_id,
                        "score": float(score),
                        "category_id": self._contiguous_to_id[int(label)],
                        "segmentations": encode_video_masks(np.asarray(masks)),
                    }
                )

    def evaluate(self) -> Dict:
        predictions, video_ids = self._predictions, self._video_ids
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            video_ids = list(itertools.chain(*comm.gather(video_ids, dst=0)))
            if not comm.is_main_process():
                return {}
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, "results.json")
            with open(path, "w") as f:
                json.dump(predictions, f)
            logger.info("Wrote %d video predictions to %s.", len(predictions), path)
        dataset_dicts = DatasetCatalog.get(self._dataset_name)
        if not dataset_dicts or "annotations" not in dataset_dicts[0]:
            logger.warning(
                "Data set %r has no ground truth: no AP is computed. %s",
                self._dataset_name,
                "Zip results.json in "
                f"{self._output_dir} and submit it to the YouTube-VIS challenge server."
                if self._output_dir
                else "Give the evaluator an output_dir to write results.json for the challenge "
                "server.",
            )
            return {}
        return OrderedDict(segm=self._video_ap(dataset_dicts, predictions, video_ids))

    def _video_ap(
        self, dataset_dicts: List[Dict], predictions: List[Dict], video_ids: List[int]
    ) -> Dict[str, float]:
        known = {record["video_id"] for record in dataset_dicts}
        scored = sorted(set(video_ids) & known)
        if len(scored) < len(known):
            logger.warning(
                "Scoring %d of the %d videos of %r (the others were not processed).",
                len(scored),
                len(known),
                self._dataset_name,
            )
        ids = sorted(self._contiguous_to_id.values())
        classes = self._metadata.thing_classes
        id_map = self._metadata.thing_dataset_id_to_contiguous_id
        _, metrics = evaluate_video_ap(
            video_ground_truth(dataset_dicts, self._contiguous_to_id),
            predictions,
            ids,
            video_ids=scored,
            class_names=[classes[id_map[i]] for i in ids],
        )
        main = {name: value for name, value in metrics.items() if not name.startswith("AP-")}
        logger.info("Video AP (segm) on %s:\n%s", self._dataset_name, create_small_table(main))
        return metrics
