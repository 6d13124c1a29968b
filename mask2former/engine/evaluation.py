"""Evaluators for a data set, chosen by its ``evaluator_type`` metadata.

``EVALUATOR_BUILDERS`` maps an ``evaluator_type`` to the builders whose evaluators run on it;
each builder is called as ``builder(cfg, dataset_name, output_folder)`` and returns a (possibly
empty) list of ``DatasetEvaluator``. Builders that depend on an output of the model return
nothing when ``MODEL.MASK_FORMER.TEST.{SEMANTIC_ON, INSTANCE_ON, PANOPTIC_ON}`` is off.
"""

import itertools
import logging
from typing import Callable, Dict, List, Optional, Tuple

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    SemSegEvaluator,
)

logger = logging.getLogger(__name__)

EvaluatorBuilder = Callable[[CfgNode, str, str], List[DatasetEvaluator]]


class InstanceSegEvaluator(COCOEvaluator):
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


def _semantic(cfg: CfgNode, dataset_name: str, output_folder: str) -> List[DatasetEvaluator]:
    return [SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)]


def _coco_instances(cfg: CfgNode, dataset_name: str, output_folder: str) -> List[DatasetEvaluator]:
    return [COCOEvaluator(dataset_name, output_dir=output_folder)]


def _mapped_instances(
    cfg: CfgNode, dataset_name: str, output_folder: str
) -> List[DatasetEvaluator]:
    return [InstanceSegEvaluator(dataset_name, output_dir=output_folder)]


def _panoptic(cfg: CfgNode, dataset_name: str, output_folder: str) -> List[DatasetEvaluator]:
    return [COCOPanopticEvaluator(dataset_name, output_folder)]


def _cityscapes_semantic(
    cfg: CfgNode, dataset_name: str, output_folder: str
) -> List[DatasetEvaluator]:
    return [CityscapesSemSegEvaluator(dataset_name)]


def _cityscapes_instances(
    cfg: CfgNode, dataset_name: str, output_folder: str
) -> List[DatasetEvaluator]:
    return [CityscapesInstanceEvaluator(dataset_name)]


def _lvis(cfg: CfgNode, dataset_name: str, output_folder: str) -> List[DatasetEvaluator]:
    return [LVISEvaluator(dataset_name, output_dir=output_folder)]


def _when(test_flag: str, builder: EvaluatorBuilder) -> EvaluatorBuilder:
    """Run ``builder`` only when ``MODEL.MASK_FORMER.TEST.<test_flag>`` is on."""

    def build(cfg: CfgNode, dataset_name: str, output_folder: str) -> List[DatasetEvaluator]:
        if not cfg.MODEL.MASK_FORMER.TEST[test_flag]:
            return []
        return builder(cfg, dataset_name, output_folder)

    return build


EVALUATOR_BUILDERS: Dict[str, Tuple[EvaluatorBuilder, ...]] = {
    "sem_seg": (_semantic,),
    "coco": (_coco_instances,),
    "lvis": (_lvis,),
    "coco_panoptic_seg": (
        _when("PANOPTIC_ON", _panoptic),
        _when("INSTANCE_ON", _coco_instances),
        _when("SEMANTIC_ON", _semantic),
    ),
    "ade20k_panoptic_seg": (
        _when("PANOPTIC_ON", _panoptic),
        _when("INSTANCE_ON", _mapped_instances),
        _when("SEMANTIC_ON", _semantic),
    ),
    "mapillary_vistas_panoptic_seg": (
        _when("PANOPTIC_ON", _panoptic),
        _when("INSTANCE_ON", _mapped_instances),
        _when("SEMANTIC_ON", _semantic),
    ),
    "cityscapes_sem_seg": (_cityscapes_semantic,),
    "cityscapes_instance": (_cityscapes_instances,),
    "cityscapes_panoptic_seg": (
        _when("PANOPTIC_ON", _panoptic),
        _when("SEMANTIC_ON", _cityscapes_semantic),
        _when("INSTANCE_ON", _cityscapes_instances),
    ),
}


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
    """
    if output_folder is None:
        output_folder = f"{cfg.OUTPUT_DIR}/inference"
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATOR_BUILDERS:
        raise NotImplementedError(
            f"No evaluator for data set {dataset_name!r} with evaluator_type {evaluator_type!r}; "
            f"known types: {sorted(EVALUATOR_BUILDERS)}. Set evaluator_type in its "
            "MetadataCatalog entry or add a builder to EVALUATOR_BUILDERS."
        )
    evaluators = list(
        itertools.chain.from_iterable(
            build(cfg, dataset_name, output_folder) for build in EVALUATOR_BUILDERS[evaluator_type]
        )
    )
    if not evaluators:
        raise ValueError(
            f"Data set {dataset_name!r} ({evaluator_type}) gets no evaluator: every "
            "MODEL.MASK_FORMER.TEST.*_ON flag that it could use is off."
        )
    if len(evaluators) == 1:
        return evaluators[0]
    return DatasetEvaluators(evaluators)
