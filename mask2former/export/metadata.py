"""What an exported model carries besides the network, so that the file alone runs it.

Stored as string key/value pairs: an ONNX file's ``metadata_props``; in a ``torch.export``
program (.pt2), the extra file ``mask2former.json`` holding them as a JSON object. Every key
starts with ``mask2former.``:

- ``format_version``: :data:`FORMAT_VERSION`; a reader refuses other versions;
- ``config``: the model's config (YAML), with the size divisibility resolved: the Python
  reader (:class:`~mask2former.Predictor`) takes pre- and post-processing settings from it,
  as the PyTorch path does;
- ``dataset_metadata``: JSON of the test data set's class names, colours and category ids;
- ``thing_classes``: JSON list of the contiguous ids of the thing classes (the thing/stuff
  split used by panoptic and instance inference), or null;

and, written from the same config for readers in other languages: ``class_names`` (JSON),
``input_name``, ``output_names`` (JSON), ``input_format`` ("RGB"/"BGR"), ``pixel_mean`` /
``pixel_std`` (JSON, applied before the network), ``size_divisibility`` (heights and widths
must be multiples of it), ``min_size_test`` / ``max_size_test`` (the resize before
padding), ``object_mask_threshold``, ``overlap_threshold``, ``mask_threshold``,
``test_topk_per_image`` and ``tasks`` (JSON list of the outputs the config switches on).
"""

import json
from dataclasses import dataclass
from typing import Dict, List, Optional

from detectron2.config import CfgNode, get_cfg
from detectron2.data.catalog import Metadata

from ..config import add_maskformer2_config
from ..utils.class_names import class_names_from_metadata
from ..utils.results import TASK_CONFIG_KEYS

__all__ = [
    "FORMAT_VERSION",
    "INPUT_NAME",
    "MIN_BLOCKS",
    "OUTPUT_NAMES",
    "PROGRAM_EXTRA_FILE",
    "ExportedModelError",
    "ModelDescription",
]

FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAMES = ("class_logits", "mask_logits")
# The smallest exported height and width, in multiples of the size divisibility. The coarsest
# feature map is 1/size_divisibility of the input, and torch.export specialises sizes 0 and 1:
# a program traced with dynamic sizes holds only where that map has at least 2 rows and
# columns. (A Mask2Former input is resized to 800 px on its short side before padding, far
# above this.)
MIN_BLOCKS = 2
PREFIX = "mask2former."
# The file inside a torch.export archive (.pt2) that holds the key/value pairs, as JSON.
PROGRAM_EXTRA_FILE = "mask2former.json"
# Data set metadata that results and pictures use (names, colours, category ids).
_DATASET_KEYS = (
    "thing_classes",
    "stuff_classes",
    "thing_colors",
    "stuff_colors",
    "thing_dataset_id_to_contiguous_id",
    "stuff_dataset_id_to_contiguous_id",
)
_ID_MAPS = ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id")


class ExportedModelError(RuntimeError):
    """An exported model file is missing, unreadable, from another format version, or does not
    fit the config it is used with; the message names the file and what to do."""


def _config_from_yaml(text: str, source: str) -> CfgNode:
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    try:
        cfg.merge_from_other_cfg(CfgNode.load_cfg(text))
    except KeyError as error:
        raise ExportedModelError(
            f"{source}: its config has a key this code does not declare ({error}); export "
            "the model again with this version's tools/export_model.py."
        ) from error
    return cfg


@dataclass
class ModelDescription:
    """The settings an exported network needs around it.

    Attributes:
        config: the model's config (frozen); MODEL.MASK_FORMER.SIZE_DIVISIBILITY is resolved.
        dataset_metadata: names, colours and category ids of the test data set.
        thing_classes: contiguous ids of the thing classes; None when the model's training
            metadata has no thing/stuff split.
    """

    config: CfgNode
    dataset_metadata: Metadata
    thing_classes: Optional[List[int]]

    @property
    def size_divisibility(self) -> int:
        return self.config.MODEL.MASK_FORMER.SIZE_DIVISIBILITY

    def model_metadata(self) -> Metadata:
        """Metadata for the MaskFormer post-processing (only the thing/stuff split)."""
        metadata = Metadata(name=self.dataset_metadata.name)
        if self.thing_classes is not None:
            metadata.set(thing_dataset_id_to_contiguous_id={i: i for i in self.thing_classes})
        return metadata

    def to_strings(self) -> Dict[str, str]:
        """The ``mask2former.*`` key/value pairs described in the module docstring."""
        cfg = self.config
        test = cfg.MODEL.MASK_FORMER.TEST
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        dataset = {
            key: self.dataset_metadata.get(key)
            for key in _DATASET_KEYS
            if self.dataset_metadata.get(key, None) is not None
        }
        dataset["name"] = self.dataset_metadata.name
        values = {
            "format_version": FORMAT_VERSION,
            "config": cfg.dump(),
            "dataset_metadata": dataset,
            "thing_classes": self.thing_classes,
            "class_names": class_names_from_metadata(self.dataset_metadata, num_classes),
            "input_name": INPUT_NAME,
            "output_names": list(OUTPUT_NAMES),
            "input_format": cfg.INPUT.FORMAT,
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "size_divisibility": self.size_divisibility,
            "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
            "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "mask_threshold": test.MASK_THRESHOLD,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "tasks": [task for task, key in TASK_CONFIG_KEYS.items() if test[key]],
        }
        return {
            PREFIX + key: value if isinstance(value, str) else json.dumps(value)
            for key, value in values.items()
        }

    @classmethod
    def from_strings(cls, strings: Dict[str, str], source: str) -> "ModelDescription":
        """Read back what :meth:`to_strings` wrote.

        Args:
            strings: the file's key/value pairs.
            source: the file, named in errors.

        Raises:
            ExportedModelError: the keys are missing or of another format version.
        """
        version = strings.get(PREFIX + "format_version")
        if version is None:
            raise ExportedModelError(
                f"{source} has no {PREFIX}format_version: it was not written by "
                "tools/export_model.py. Export the model with it."
            )
        if version != str(FORMAT_VERSION):
            raise ExportedModelError(
                f"{source} is in export format version {version}, this code reads version "
                f"{FORMAT_VERSION}: export the model again with this version's "
                "tools/export_model.py."
            )
        dataset = json.loads(strings[PREFIX + "dataset_metadata"])
        for key in _ID_MAPS:
            if key in dataset:
                dataset[key] = {int(k): v for k, v in dataset[key].items()}
        cfg = _config_from_yaml(strings[PREFIX + "config"], source)
        cfg.freeze()
        return cls(
            config=cfg,
            dataset_metadata=Metadata(**dataset),
            thing_classes=json.loads(strings[PREFIX + "thing_classes"]),
        )
