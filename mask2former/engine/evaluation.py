"""Evaluators for a data set, chosen by its ``evaluator_type`` metadata.

``EVALUATOR_REGISTRY`` holds, for each ``evaluator_type``, the model outputs that data sets of
that type can score, one :class:`OutputEvaluation` each: the ``MODEL.MASK_FORMER.TEST`` flag that
turns the output on, a builder called as ``build(cfg, dataset_name, output_folder)`` that
returns a list of ``DatasetEvaluator``, where only some data sets of the type have that
ground truth, the metadata field that says a data set has it, and the optional packages its
evaluators import (the Cityscapes scripts, the LVIS API), which
:func:`check_evaluation_dependencies` checks before any training or inference.

An output is evaluated when its flag is on and the data set has its ground truth. An output
that is on but has no ground truth in the data set (the semantic and panoptic outputs of the
official ADE20K instance configs on ``ade20k_instance_val``, say) is skipped, and one log line
says so.
"""

import csv
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    SemSegEvaluator,
)
from detectron2.utils.registry import Registry

from ..utils.results import TASK_CONFIG_KEYS
from .boundary_ap import check_dilation_ratio
from .partial_evaluation import PartialCOCOEvaluator, PartialCOCOPanopticEvaluator
from .ytvis_evaluation import YTVISEvaluator

logger = logging.getLogger(__name__)

EvaluatorBuilder = Callable[[CfgNode, str, str], List[DatasetEvaluator]]


class InstanceSegEvaluator(PartialCOCOEvaluator):
    """COCO instance evaluation for panoptic data sets whose thing classes are interleaved.

    A panoptic model numbers classes contiguously over things *and* stuff (ADE20K, Mapillary
    Vistas), while ``COCOEvaluator`` expects ``thing_dataset_id_to_contiguous_id`` to map onto
    0..T-1 over the T thing classes. This evaluator renumbers each predicted class to its rank
    among the thing classes, drops predictions of stuff classes (they cannot match any instance
    annotation), and lets ``COCOEvaluator`` map the ranks back to the annotation file's ids.
    """

    def __init__(self, dataset_name: str, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        dataset_id_to_contiguous = self._metadata.thing_dataset_id_to_contiguous_id
        thing_ids = sorted(dataset_id_to_contiguous.items(), key=lambda item: item[1])
        self._contiguous_to_rank = {
            contiguous: rank for rank, (_, contiguous) in enumerate(thing_ids)
        }
        self._metadata = _MetadataView(
            self._metadata,
            {dataset_id: rank for rank, (dataset_id, _) in enumerate(thing_ids)},
        )

    def process(self, inputs, outputs):
        """Like ``COCOEvaluator.process``, with classes renumbered to thing ranks."""
        num_before = len(self._predictions)
        super().process(inputs, outputs)
        for prediction in self._predictions[num_before:]:
            if "instances" not in prediction:
                continue
            prediction["instances"] = [
                {**instance, "category_id": self._contiguous_to_rank[instance["category_id"]]}
                for instance in prediction["instances"]
                if instance["category_id"] in self._contiguous_to_rank
            ]


class _MetadataView:
    """A ``Metadata`` seen with ``thing_dataset_id_to_contiguous_id`` replaced."""

    def __init__(self, metadata, thing_dataset_id_to_contiguous_id: Dict[int, int]):
        self._metadata = metadata
        self.thing_dataset_id_to_contiguous_id = thing_dataset_id_to_contiguous_id

    def __getattr__(self, name):
        return getattr(self._metadata, name)


class SemSegEvaluatorWithConfusion(SemSegEvaluator):
    """Detectron2's ``SemSegEvaluator`` that also writes the confusion matrix it scores from,
    as ``sem_seg_confusion_matrix.csv`` in its output folder: one row per ground-truth class,
    one column per predicted class, pixel counts (ignored pixels left out)."""

    CONFUSION_FILE = "sem_seg_confusion_matrix.csv"

    def evaluate(self):
        results = super().evaluate()
        if results is not None and self._output_dir:
            self._write_confusion_matrix(os.path.join(self._output_dir, self.CONFUSION_FILE))
        return results

    def _write_confusion_matrix(self, path: str) -> None:
        # Detectron2 counts (prediction, ground truth) pairs; the last row and column are the
        # ignored label
        counts = self._conf_matrix[:-1, :-1].T
        names = list(self._class_names)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ground truth \\ prediction", *names])
            for name, row in zip(names, counts):
                writer.writerow([name, *(int(count) for count in row)])
        logger.info("Semantic confusion matrix (pixels) written to %s", path)


def _semantic(cfg: CfgNode, dataset_name: str, output_folder: str) -> List[DatasetEvaluator]:
    return [SemSegEvaluatorWithConfusion(dataset_name, distributed=True, output_dir=output_folder)]


def _boundary_dilation_ratio(cfg: CfgNode) -> Optional[float]:
    """TEST.BOUNDARY_AP.DILATION_RATIO when TEST.BOUNDARY_AP.ENABLED, else None."""
    boundary_ap = cfg.TEST.BOUNDARY_AP
    if not boundary_ap.ENABLED:
        return None
    check_dilation_ratio(boundary_ap.DILATION_RATIO, "TEST.BOUNDARY_AP.DILATION_RATIO")
    return float(boundary_ap.DILATION_RATIO)


def _no_boundary_ap(cfg: CfgNode, dataset_name: str, evaluator: str) -> None:
    if cfg.TEST.BOUNDARY_AP.ENABLED:
        logger.warning(
            "TEST.BOUNDARY_AP.ENABLED: boundary AP is computed by the COCO-style instance "
            "evaluation only; data set %r is scored by the %s, which reports none.",
            dataset_name,
            evaluator,
        )


def _coco_instances(cfg: CfgNode, dataset_name: str, output_folder: str) -> List[DatasetEvaluator]:
    return [
        PartialCOCOEvaluator(
            dataset_name,
            output_dir=output_folder,
            boundary_dilation_ratio=_boundary_dilation_ratio(cfg),
        )
    ]


def _mapped_instances(
    cfg: CfgNode, dataset_name: str, output_folder: str
) -> List[DatasetEvaluator]:
    return [
        InstanceSegEvaluator(
            dataset_name,
            output_dir=output_folder,
            boundary_dilation_ratio=_boundary_dilation_ratio(cfg),
        )
    ]


def _panoptic(cfg: CfgNode, dataset_name: str, output_folder: str) -> List[DatasetEvaluator]:
    return [PartialCOCOPanopticEvaluator(dataset_name, output_folder)]


def _cityscapes_semantic(
    cfg: CfgNode, dataset_name: str, output_folder: str
) -> List[DatasetEvaluator]:
    return [CityscapesSemSegEvaluator(dataset_name)]


def _cityscapes_instances(
    cfg: CfgNode, dataset_name: str, output_folder: str
) -> List[DatasetEvaluator]:
    _no_boundary_ap(cfg, dataset_name, "Cityscapes instance scripts")
    return [CityscapesInstanceEvaluator(dataset_name)]


def _lvis(cfg: CfgNode, dataset_name: str, output_folder: str) -> List[DatasetEvaluator]:
    _no_boundary_ap(cfg, dataset_name, "LVIS API")
    return [LVISEvaluator(dataset_name, output_dir=output_folder)]


def _ytvis(cfg: CfgNode, dataset_name: str, output_folder: str) -> List[DatasetEvaluator]:
    _no_boundary_ap(cfg, dataset_name, "YouTube-VIS video AP")
    return [YTVISEvaluator(dataset_name, output_dir=output_folder)]


# The MODEL.MASK_FORMER.TEST flags that turn the model's outputs on, and the outputs' names.
OUTPUT_FLAGS = {flag: task for task, flag in TASK_CONFIG_KEYS.items()}

# Packages that some of Detectron2's evaluators import, which this project does not install
# (as in Detectron2 and the official release): module -> what to run to install it.
OPTIONAL_PACKAGES = {
    "cityscapesscripts": "pip install cityscapesscripts",
    "lvis": "pip install lvis",
}


@dataclass(frozen=True)
class OutputEvaluation:
    """How one model output is scored on the data sets of one ``evaluator_type``.

    Attributes:
        flag: the ``MODEL.MASK_FORMER.TEST`` flag of the output (a key of ``OUTPUT_FLAGS``).
        build: returns the evaluators, called as ``build(cfg, dataset_name, output_folder)``.
        ground_truth: metadata field (a path) that a data set of this type sets when it has
            this ground truth; None when every data set of the type has it.
        requires: optional Python packages the evaluators import (keys of
            ``OPTIONAL_PACKAGES``), checked before any inference
            (:func:`check_evaluation_dependencies`).
    """

    flag: str
    build: EvaluatorBuilder
    ground_truth: Optional[str] = None
    requires: Tuple[str, ...] = ()


def _panoptic_type(instances: EvaluatorBuilder) -> Tuple[OutputEvaluation, ...]:
    """A COCO-style panoptic data set: panoptic PNGs + JSON, optionally semantic PNGs
    (``sem_seg_root``) and an instance JSON (``json_file``)."""
    return (
        OutputEvaluation("PANOPTIC_ON", _panoptic, ground_truth="panoptic_json"),
        OutputEvaluation("INSTANCE_ON", instances, ground_truth="json_file"),
        OutputEvaluation("SEMANTIC_ON", _semantic, ground_truth="sem_seg_root"),
    )


EVALUATOR_REGISTRY = Registry("MASK_FORMER_EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
Registry for the evaluation of data sets by their ``evaluator_type`` metadata.

A registered object is a function named as the ``evaluator_type`` it serves, called as
``obj()``; it returns the :class:`OutputEvaluation` of every model output that data sets of
that type can score. Register another type with ``@EVALUATOR_REGISTRY.register()``.
"""


@EVALUATOR_REGISTRY.register()
def sem_seg() -> Tuple[OutputEvaluation, ...]:
    return (OutputEvaluation("SEMANTIC_ON", _semantic),)


@EVALUATOR_REGISTRY.register()
def coco() -> Tuple[OutputEvaluation, ...]:
    return (OutputEvaluation("INSTANCE_ON", _coco_instances),)


@EVALUATOR_REGISTRY.register()
def lvis() -> Tuple[OutputEvaluation, ...]:
    return (OutputEvaluation("INSTANCE_ON", _lvis, requires=("lvis",)),)


@EVALUATOR_REGISTRY.register()
def ytvis() -> Tuple[OutputEvaluation, ...]:
    """Video instance segmentation: results.json, and video AP where there is ground truth."""
    return (OutputEvaluation("INSTANCE_ON", _ytvis),)


@EVALUATOR_REGISTRY.register()
def coco_panoptic_seg() -> Tuple[OutputEvaluation, ...]:
    return _panoptic_type(_coco_instances)


@EVALUATOR_REGISTRY.register()
def ade20k_panoptic_seg() -> Tuple[OutputEvaluation, ...]:
    return _panoptic_type(_mapped_instances)


@EVALUATOR_REGISTRY.register()
def mapillary_vistas_panoptic_seg() -> Tuple[OutputEvaluation, ...]:
    return _panoptic_type(_mapped_instances)


@EVALUATOR_REGISTRY.register()
def cityscapes_sem_seg() -> Tuple[OutputEvaluation, ...]:
    return (OutputEvaluation("SEMANTIC_ON", _cityscapes_semantic, requires=("cityscapesscripts",)),)


@EVALUATOR_REGISTRY.register()
def cityscapes_instance() -> Tuple[OutputEvaluation, ...]:
    return (
        OutputEvaluation("INSTANCE_ON", _cityscapes_instances, requires=("cityscapesscripts",)),
    )


@EVALUATOR_REGISTRY.register()
def cityscapes_panoptic_seg() -> Tuple[OutputEvaluation, ...]:
    """COCO-style panoptic evaluation, and the Cityscapes semantic and instance ones."""
    return (
        OutputEvaluation("PANOPTIC_ON", _panoptic),
        *cityscapes_sem_seg(),
        *cityscapes_instance(),
    )


def _outputs(flags: Iterable[str]) -> str:
    """The outputs' names, e.g. "semantic, panoptic" for ["SEMANTIC_ON", "PANOPTIC_ON"]."""
    return ", ".join(OUTPUT_FLAGS[flag] for flag in flags)


class EvaluationDependencyError(ImportError):
    """An evaluator of a test data set needs a package that is not installed."""


def _evaluations(cfg: CfgNode, dataset_name: str) -> Tuple[List[OutputEvaluation], List[str], str]:
    """The outputs evaluated on ``dataset_name``, the flags that are on but skipped (no ground
    truth), and the data set's ``evaluator_type``.

    Raises:
        NotImplementedError: no evaluation is registered for its ``evaluator_type``.
        ValueError: the config turns off every output the data set can score.
    """
    metadata = MetadataCatalog.get(dataset_name)
    evaluator_type = metadata.get("evaluator_type", None)
    if evaluator_type not in EVALUATOR_REGISTRY:
        known = sorted(registered for registered, _ in EVALUATOR_REGISTRY)
        raise NotImplementedError(
            f"No evaluator for data set {dataset_name!r} with evaluator_type {evaluator_type!r}; "
            f"known types: {known}. Set evaluator_type in its MetadataCatalog entry, or "
            "register its evaluation with @EVALUATOR_REGISTRY.register() "
            "(mask2former.engine.evaluation)."
        )
    scorable = [
        evaluation
        for evaluation in EVALUATOR_REGISTRY.get(evaluator_type)()
        if evaluation.ground_truth is None or metadata.get(evaluation.ground_truth, None)
    ]
    flags = cfg.MODEL.MASK_FORMER.TEST
    evaluated = [evaluation for evaluation in scorable if flags[evaluation.flag]]
    if not evaluated:
        raise ValueError(
            f"Data set {dataset_name!r} ({evaluator_type}) has ground truth for the outputs "
            f"[{_outputs(e.flag for e in scorable)}], and the config turns all of them off "
            f"(MODEL.MASK_FORMER.TEST.{', '.join(e.flag for e in scorable)}): nothing to "
            "evaluate. Turn one on, or evaluate on a data set with ground truth for an output "
            "that is on."
        )
    scorable_flags = {evaluation.flag for evaluation in scorable}
    skipped = [flag for flag in OUTPUT_FLAGS if flags[flag] and flag not in scorable_flags]
    return evaluated, skipped, evaluator_type


def _check_packages(
    evaluations: Iterable[OutputEvaluation], dataset_name: str, evaluator_type: str
) -> None:
    for evaluation in evaluations:
        for module in evaluation.requires:
            if importlib.util.find_spec(module) is None:
                raise EvaluationDependencyError(
                    f"Evaluating the {OUTPUT_FLAGS[evaluation.flag]} output on data set "
                    f"{dataset_name!r} ({evaluator_type}) needs the Python package {module!r}, "
                    f"which is not installed: {OPTIONAL_PACKAGES.get(module, 'install it')}. "
                    f"Or turn the output off (MODEL.MASK_FORMER.TEST.{evaluation.flag} False)."
                )


def check_evaluation_dependencies(cfg: CfgNode) -> None:
    """Fail now, not after training or inference, when an evaluator of ``DATASETS.TEST`` needs
    a package that is not installed (the Cityscapes scripts, the LVIS API: see
    ``OPTIONAL_PACKAGES``), or when a test data set cannot be evaluated at all.

    Raises:
        EvaluationDependencyError: the package is missing; the message says what to install.
        NotImplementedError, ValueError: see :func:`build_evaluator`.
    """
    for dataset_name in cfg.DATASETS.TEST:
        evaluated, _, evaluator_type = _evaluations(cfg, dataset_name)
        _check_packages(evaluated, dataset_name, evaluator_type)


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluator:
    """Build the evaluators for ``dataset_name`` from its metadata's ``evaluator_type``.

    Args:
        cfg: the full config.
        dataset_name: a name registered in ``MetadataCatalog``.
        output_folder: where evaluators write their files; default
            ``{OUTPUT_DIR}/inference``.

    Returns:
        One evaluator, or a ``DatasetEvaluators`` combining several.

    Raises:
        NotImplementedError: no evaluation is registered for its ``evaluator_type``.
        ValueError: the config turns off every output the data set can score.
        EvaluationDependencyError: an evaluator needs a package that is not installed.
    """
    if output_folder is None:
        output_folder = f"{cfg.OUTPUT_DIR}/inference"
    evaluated, skipped, evaluator_type = _evaluations(cfg, dataset_name)
    _check_packages(evaluated, dataset_name, evaluator_type)
    if skipped:
        logger.warning(
            "Data set %r has no ground truth for the outputs %s that the config turns on "
            "(MODEL.MASK_FORMER.TEST.%s): skipped; evaluating %s.",
            dataset_name,
            _outputs(skipped),
            ", ".join(skipped),
            _outputs(evaluation.flag for evaluation in evaluated),
        )
    evaluators = [
        evaluator
        for evaluation in evaluated
        for evaluator in evaluation.build(cfg, dataset_name, output_folder)
    ]
    if len(evaluators) == 1:
        return evaluators[0]
    return DatasetEvaluators(evaluators)
