"""Hugging Face transformers' Mask2Former checkpoints: read them here, write ours for them.

A Hugging Face folder is what ``Mask2FormerForUniversalSegmentation.save_pretrained`` writes
(or a Hub repository downloaded as is): ``config.json``, the weights as safetensors
(``model.safetensors``, or shards listed in ``model.safetensors.index.json``) and usually
``preprocessor_config.json``. Only safetensors are read (through
:func:`mask2former.utils.weights_io.load_weights_file`): ``pytorch_model.bin`` files are
pickles, which can run code when loaded.

- :func:`load_hf_folder`: our config and state dict for a folder, classes registered as
  metadata (what :meth:`mask2former.Predictor.from_hf` runs);
- :func:`convert_hf_to_d2`: writes our checkpoint, a complete YAML config and the class table
  (``tools/convert-hf-to-d2.py``);
- :func:`convert_d2_to_hf`: writes a folder that transformers loads with
  ``Mask2FormerForUniversalSegmentation.from_pretrained`` (``tools/convert-d2-to-hf.py``).

Parameter names: :mod:`.hf_state_dict`; settings: :mod:`.hf_config`. Reading needs
``safetensors``; writing a folder also ``transformers`` (its config classes write the JSON
files, and the written folder is loaded back with it as a check).

Differences that remain by design (the networks agree; see README, "Hugging Face"):

- transformers' image processor resizes an image so that both sides are multiples of 32
  (changing its aspect ratio slightly) where detectron2 pads; and its post-processing first
  resizes the mask logits to 384 x 384 whatever the input size. At a 384 x 384 input the two
  resizing schemes coincide.
- Panoptic: transformers gives every pixel to the best-scoring kept query, where the official
  definition (ours) leaves pixels void when that query's mask probability is below 0.5; and it
  measures a segment's own area on score-weighted probabilities.
- Instance: transformers keeps the top ``num_queries`` (query, class) pairs whose score
  reaches its threshold and whose mask is not empty, unsorted; ours keeps the top
  TEST.DETECTIONS_PER_IMAGE pairs sorted by score, with boxes.
"""

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Union

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from ..config import load_config
from ..data.dataset_mappers.build import is_video_config
from ..data.datasets.catalog_utils import register_metadata_categories
from ..engine.checkpoint import AtomicDetectionCheckpointer
from ..utils.class_names import class_names_from_metadata
from ..utils.json_io import read_json
from ..utils.weights_io import load_weights_file, save_weights_file
from .hf_config import (
    UnsupportedConfigError,
    config_from_hf,
    guess_task,
    hf_config_from_d2,
    hf_preprocessor_from_d2,
    id2label_names,
    stuff_ids_from_hf,
)
from .hf_state_dict import UnmappedKeysError, d2_to_hf_state_dict, hf_to_d2_state_dict

__all__ = [
    "HFFolder",
    "ConvertedModel",
    "read_hf_folder",
    "load_hf_folder",
    "convert_hf_to_d2",
    "convert_d2_to_hf",
    "convert_d2_checkpoint_to_hf",
]

INSTALL_HINT = "pip install transformers (requirements.txt pins the version tested here)"
_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
CHECKPOINT_NAME = "model_final.pth"
CONFIG_NAME = "config.yaml"
METADATA_NAME = "metadata.json"


def _transformers():
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            f"Writing a Hugging Face folder needs transformers: {INSTALL_HINT}"
        ) from error
    return transformers


@dataclass
class HFFolder:
    """The files of a Hugging Face Mask2Former folder.

    Attributes:
        path: the folder.
        config: parsed ``config.json``.
        preprocessor: parsed ``preprocessor_config.json``, or None when absent.
        state_dict: the safetensors tensors by (Hugging Face) name.
    """

    path: str
    config: Dict[str, Any]
    preprocessor: Optional[Dict[str, Any]]
    state_dict: Dict[str, torch.Tensor]


@dataclass
class ConvertedModel:
    """A Hugging Face model in our terms.

    Attributes:
        cfg: our config (DATASETS.TRAIN / TEST name the registered class metadata).
        state_dict: our parameter names; loads into ``build_model(cfg)`` strictly.
        categories: the class table, ``{"id", "name", "isthing"}`` per contiguous class.
    """

    cfg: CfgNode
    state_dict: Dict[str, torch.Tensor]
    categories: List[Dict[str, Any]]


def read_hf_folder(path: Union[str, os.PathLike]) -> HFFolder:
    """Read a Hugging Face model folder from disk (no network).

    Raises:
        FileNotFoundError: the folder, its config.json or its safetensors weights are missing
            (the message says how to download a Hub model, or how to convert .bin weights).
        ImportError: safetensors is not installed.
        mask2former.utils.weights_io.WeightsFileError: a weights file is empty or damaged.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        hint = ""
        if re.fullmatch(r"[\w.-]+/[\w.-]+", path):
            hint = (
                f" It looks like a Hub model id: nothing is downloaded here, so download the "
                f"folder first, e.g. `hf download {path} --local-dir DIR`, and pass DIR."
            )
        raise FileNotFoundError(f"Hugging Face model folder '{path}' does not exist.{hint}")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"'{path}' is not a Hugging Face model folder: it has no config.json."
        )
    preprocessor_path = os.path.join(path, "preprocessor_config.json")
    preprocessor = read_json(preprocessor_path) if os.path.isfile(preprocessor_path) else None
    return HFFolder(path, read_json(config_path), preprocessor, _read_weights(path))


def _read_weights(path: str) -> Dict[str, torch.Tensor]:
    index_path = os.path.join(path, _SAFETENSORS_INDEX)
    if os.path.isfile(os.path.join(path, _SAFETENSORS)):
        files = [_SAFETENSORS]
    elif os.path.isfile(index_path):
        files = sorted(set(read_json(index_path)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        raise FileNotFoundError(
            f"'{path}' has its weights only as pytorch_model.bin, a pickle that can run code when "
            "loaded, which is not read here. Write safetensors with transformers where you "
            "trust the file: Mask2FormerForUniversalSegmentation.from_pretrained(path)"
            ".save_pretrained(new_path)."
        )
    else:
        raise FileNotFoundError(
            f"'{path}' has no weights: neither {_SAFETENSORS} nor {_SAFETENSORS_INDEX}."
        )
    state: Dict[str, torch.Tensor] = {}
    for name in files:
        file_path = os.path.join(path, name)
        if not os.path.isfile(file_path):
            raise FileNotFoundError(f"{file_path}, listed in {_SAFETENSORS_INDEX}, is missing.")
        state.update(load_weights_file(file_path)["model"])
    return state


def _stuff_ids(
    stuff_classes: Optional[Iterable[Union[int, str]]], class_names: Sequence[str]
) -> Set[int]:
    ids = set()
    for item in stuff_classes or ():
        if isinstance(item, str) and not item.isdigit():
            if item not in class_names:
                raise ValueError(
                    f"stuff class {item!r} is not a class of this model; its classes are "
                    f"{list(class_names)}."
                )
            ids.add(class_names.index(item))
        else:
            index = int(item)
            if not 0 <= index < len(class_names):
                raise ValueError(f"stuff class id {index} is not in 0..{len(class_names) - 1}.")
            ids.add(index)
    return ids


def load_hf_folder(
    path: Union[str, os.PathLike],
    *,
    task: Optional[str] = None,
    stuff_classes: Optional[Iterable[Union[int, str]]] = None,
    metadata_name: Optional[str] = None,
) -> ConvertedModel:
    """Our config and weights for a Hugging Face folder; its classes become metadata.

    Args:
        path: the folder (read from disk only).
        task: "panoptic" (every output), "instance" or "semantic"; None: the one the folder
            name announces (Hub names end in -coco-panoptic, -ade-semantic, ...), else
            "panoptic".
        stuff_classes: ids or names of the classes whose segments panoptic inference merges
            (transformers' ``label_ids_to_fuse``); None: those stored in the folder, else none
            (every class a thing, as transformers does without ``label_ids_to_fuse``).
        metadata_name: name to register the class metadata under; None:
            ``"huggingface:" + absolute path``. A name already registered is replaced.

    Raises:
        FileNotFoundError, ImportError: see :func:`read_hf_folder`.
        mask2former.interop.hf_config.UnsupportedConfigError: a setting we cannot express.
        mask2former.interop.hf_state_dict.UnmappedKeysError: weights we cannot map.
    """
    folder = read_hf_folder(path)
    source = os.path.abspath(folder.path)
    class_names = id2label_names(folder.config, source)
    if stuff_classes is None:
        stuff = stuff_ids_from_hf(folder.config, folder.preprocessor) or set()
    else:
        stuff = _stuff_ids(stuff_classes, class_names)
    categories = [
        {"id": index, "name": name, "isthing": index not in stuff}
        for index, name in enumerate(class_names)
    ]
    name = metadata_name or f"huggingface:{source}"
    cfg = config_from_hf(
        folder.config,
        folder.preprocessor,
        metadata_name=name,
        task=task or guess_task(os.path.basename(source.rstrip(os.sep))),
        source=source,
    )
    state = hf_to_d2_state_dict(folder.state_dict, window_size=cfg.MODEL.SWIN.WINDOW_SIZE)
    register_metadata_categories(name, categories)
    return ConvertedModel(cfg, state, categories)


def _slug(path: str) -> str:
    base = os.path.basename(os.path.abspath(path).rstrip(os.sep))
    return "hf_" + re.sub(r"[^\w.-]+", "_", base)


def convert_hf_to_d2(
    src: Union[str, os.PathLike],
    dst: Union[str, os.PathLike],
    *,
    task: Optional[str] = None,
    stuff_classes: Optional[Iterable[Union[int, str]]] = None,
    opts: Optional[Sequence[str]] = None,
) -> Dict[str, str]:
    """Write our checkpoint, config and class table for a Hugging Face folder.

    ``dst`` receives ``model_final.pth`` (``{"model": state dict}``), ``config.yaml`` (every
    key; MODEL.WEIGHTS is the absolute path of the checkpoint, DATASETS.METADATA_FILE the class
    table, which :func:`mask2former.config.load_config` registers) and ``metadata.json``. The
    weights are checked to load into the model the config builds with no missing or
    unexpected key before anything is written.

    Args:
        src: the Hugging Face folder.
        dst: output folder (created).
        task, stuff_classes: see :func:`load_hf_folder`.
        opts: config overrides ``[KEY, VALUE, ...]`` written into config.yaml.

    Returns:
        The written paths: "checkpoint", "config", "metadata".
    """
    dst = os.path.abspath(os.fspath(dst))
    converted = load_hf_folder(
        src, task=task, stuff_classes=stuff_classes, metadata_name=_slug(src)
    )
    cfg = converted.cfg
    if opts:
        cfg.merge_from_list(list(opts))
    paths = {
        "checkpoint": os.path.join(dst, CHECKPOINT_NAME),
        "config": os.path.join(dst, CONFIG_NAME),
        "metadata": os.path.join(dst, METADATA_NAME),
    }
    cfg.MODEL.WEIGHTS = paths["checkpoint"]
    cfg.DATASETS.METADATA_FILE = METADATA_NAME  # relative to config.yaml
    _check_loads(cfg, converted.state_dict, os.fspath(src))

    os.makedirs(dst, exist_ok=True)
    save_weights_file(
        paths["checkpoint"], converted.state_dict, author=f"Hugging Face folder {src}"
    )
    with open(paths["metadata"], "w") as file:
        json.dump(
            {
                "name": cfg.DATASETS.TRAIN[0],
                "source": os.path.abspath(os.fspath(src)),
                "categories": converted.categories,
            },
            file,
            indent=1,
        )
    with open(paths["config"], "w") as file:
        file.write(cfg.dump())
    return paths


def _check_loads(cfg: CfgNode, state: Mapping[str, torch.Tensor], source: str) -> None:
    on_cpu = cfg.clone()
    on_cpu.MODEL.DEVICE = "cpu"
    model = build_model(on_cpu)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UnmappedKeysError(
            f"The weights converted from {source} do not fit the model its config describes: "
            f"{error}"
        ) from error


def convert_d2_to_hf(
    cfg: CfgNode,
    model: torch.nn.Module,
    dst: Union[str, os.PathLike],
) -> str:
    """Write a Hugging Face folder for our (Swin) model.

    ``dst`` receives ``config.json`` (with the class names as id2label, our test-time
    thresholds and, when the metadata tells things from stuff, the stuff classes as
    ``label_ids_to_fuse``), ``model.safetensors`` and ``preprocessor_config.json``. The folder
    is then loaded with ``Mask2FormerForUniversalSegmentation.from_pretrained`` and must have
    no missing or unexpected key.

    Args:
        cfg: the model's config (its DATASETS.TEST[0] metadata names the classes).
        model: the model with its trained weights (``build_model(cfg)`` + checkpoint).
        dst: output folder (created).

    Returns:
        ``dst``.

    Raises:
        ImportError: transformers or safetensors is missing.
        mask2former.interop.hf_config.UnsupportedConfigError: settings transformers lacks.
        mask2former.interop.hf_state_dict.UnmappedKeysError: parameters it has no place for.
    """
    transformers = _transformers()
    dst = os.fspath(dst)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else None
    class_names = (
        class_names_from_metadata(metadata, num_classes)
        if metadata is not None
        else [f"class {index}" for index in range(num_classes)]
    )
    things = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) if metadata else None
    stuff = None if things is None else set(range(num_classes)) - set(things.values())
    settings = hf_config_from_d2(cfg, class_names, stuff)
    hf_state = d2_to_hf_state_dict(model.state_dict())

    os.makedirs(dst, exist_ok=True)
    transformers.Mask2FormerConfig(**settings).save_pretrained(dst)
    save_weights_file(os.path.join(dst, _SAFETENSORS), hf_state, author="mask2former")
    transformers.Mask2FormerImageProcessor(**hf_preprocessor_from_d2(cfg)).save_pretrained(dst)

    _, info = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(
        dst, output_loading_info=True
    )
    problems = {kind: info[kind] for kind in ("missing_keys", "unexpected_keys") if info[kind]}
    if problems:
        raise UnmappedKeysError(f"transformers does not load {dst} completely: {problems}")
    return dst


def convert_d2_checkpoint_to_hf(
    config_file: str, dst: Union[str, os.PathLike], opts: Optional[Sequence[str]] = None
) -> str:
    """:func:`convert_d2_to_hf` for a config file and its MODEL.WEIGHTS checkpoint.

    The model is built on the CPU and the checkpoint loaded with detectron2's checkpointer,
    as the Predictor does; a parameter the checkpoint does not set is an error.

    Args:
        config_file: the model's YAML config.
        dst: output folder.
        opts: config overrides ``[KEY, VALUE, ...]`` (e.g. ``["MODEL.WEIGHTS", path]``).

    Raises:
        FileNotFoundError: the config or the weights file is missing.
        mask2former.interop.hf_config.UnsupportedConfigError: a video model's config
            (transformers' Mask2Former takes images), refused before anything is read.
    """
    cfg = load_config(config_file, ["MODEL.DEVICE", "cpu", *(opts or [])])
    if is_video_config(cfg):
        raise UnsupportedConfigError(
            f"{config_file} is a video model (MODEL.META_ARCHITECTURE "
            f"{cfg.MODEL.META_ARCHITECTURE!r}); transformers' Mask2Former takes images, so "
            "video models are not converted. Run it with mask2former.VideoPredictor."
        )
    weights = cfg.MODEL.WEIGHTS
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"Weights file '{weights}' (MODEL.WEIGHTS) does not exist; pass the checkpoint "
            "to convert (tools/convert-d2-to-hf.py --weights FILE)."
        )
    model = build_model(cfg).eval()
    _CompleteCheckpointer(model, use_average=cfg.MODEL_EMA.USE_FOR_INFERENCE).load(weights)
    return convert_d2_to_hf(cfg, model, dst)


class _CompleteCheckpointer(AtomicDetectionCheckpointer):
    """Loads like the Predictor, but a checkpoint that leaves a parameter unset is an error:
    a converted model would silently carry random weights."""

    def _log_incompatible_keys(self, incompatible) -> None:
        super()._log_incompatible_keys(incompatible)
        problems = {
            "missing": incompatible.missing_keys,
            "with another shape": [name for name, *_ in incompatible.incorrect_shapes],
        }
        problems = {kind: names for kind, names in problems.items() if names}
        if problems:
            raise UnmappedKeysError(
                f"The checkpoint does not fit the config's model: {problems}. Pass the config "
                "the checkpoint was trained with."
            )
