"""Hugging Face Mask2Former settings (``config.json``, ``preprocessor_config.json``) and ours.

:func:`config_from_hf` builds our config from a Hugging Face folder's JSON files and
:func:`hf_config_from_d2` the reverse. What transformers' Mask2Former hard-codes becomes the
equal value of our keys (3 feature levels, 4 sampling points, GroupNorm with 32 groups, mask
attention at probability 0.5, GELU Swin MLPs, ReLU feed-forward layers); a setting that one side
cannot express stops the conversion with a list of every such setting.

Test-time settings: transformers takes the panoptic thresholds and the classes to fuse as
arguments of its image processor's post-processing, not from the model folder. They are read
from ``config.json`` (then ``preprocessor_config.json``) when present, under the names
``object_mask_threshold`` (or ``threshold``, the post-processing argument),
``overlap_mask_area_threshold``, ``mask_threshold`` and ``label_ids_to_fuse`` (the stuff
classes); :func:`hf_config_from_d2` writes them there. Absent, the official configs' values
are used (0.8, 0.8, 0.5; no stuff class).
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Set

from detectron2.config import CfgNode, get_cfg

from ..config import add_maskformer2_config

__all__ = [
    "UnsupportedConfigError",
    "TASK_SWITCHES",
    "config_from_hf",
    "guess_task",
    "hf_config_from_d2",
    "hf_preprocessor_from_d2",
    "id2label_names",
    "stuff_ids_from_hf",
]

# transformers' SwinConfig / Mask2FormerConfig defaults (transformers 5.12), for keys a
# config.json leaves out.
_SWIN_DEFAULTS: Dict[str, Any] = {
    "image_size": 224,
    "patch_size": 4,
    "num_channels": 3,
    "embed_dim": 96,
    "depths": [2, 2, 6, 2],
    "num_heads": [3, 6, 12, 24],
    "window_size": 7,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "drop_path_rate": 0.1,
    "hidden_act": "gelu",
    "use_absolute_embeddings": False,
    "layer_norm_eps": 1e-5,
}
_MASK2FORMER_DEFAULTS: Dict[str, Any] = {
    "feature_size": 256,
    "mask_feature_size": 256,
    "hidden_dim": 256,
    "encoder_feedforward_dim": 1024,
    "activation_function": "relu",
    "encoder_layers": 6,
    "decoder_layers": 10,
    "num_attention_heads": 8,
    "dropout": 0.0,
    "dim_feedforward": 2048,
    "pre_norm": False,
    "enforce_input_projection": False,
    "common_stride": 4,
    "ignore_value": 255,
    "num_queries": 100,
    "no_object_weight": 0.1,
    "class_weight": 2.0,
    "mask_weight": 5.0,
    "dice_weight": 5.0,
    "train_num_points": 12544,
    "oversample_ratio": 3.0,
    "importance_sample_ratio": 0.75,
    "use_auxiliary_loss": True,
    "feature_strides": [4, 8, 16, 32],
}
# transformers' image processor defaults (ImageNet mean/std of 0..1 images).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# Constants of transformers' Mask2Former and the keys of ours that hold them.
_HF_FEATURE_LEVELS = 3
_HF_SAMPLING_POINTS = 4
_HF_GROUP_NORM_GROUPS = 32
_HF_MASK_ATTENTION_THRESHOLD = 0.5

# Which outputs a model of each kind computes: the switches of the official configs.
TASK_SWITCHES: Dict[str, Dict[str, bool]] = {
    "panoptic": {"SEMANTIC_ON": True, "INSTANCE_ON": True, "PANOPTIC_ON": True},
    "instance": {"SEMANTIC_ON": False, "INSTANCE_ON": True, "PANOPTIC_ON": False},
    "semantic": {"SEMANTIC_ON": True, "INSTANCE_ON": False, "PANOPTIC_ON": False},
}

# Test-time settings: our key, the names looked up in the Hugging Face files, the default.
_TEST_SETTINGS = (
    ("OBJECT_MASK_THRESHOLD", ("object_mask_threshold", "threshold"), 0.8),
    ("OVERLAP_THRESHOLD", ("overlap_mask_area_threshold", "overlap_threshold"), 0.8),
    ("MASK_THRESHOLD", ("mask_threshold",), 0.5),
)


class UnsupportedConfigError(ValueError):
    """A setting of one implementation that the other cannot express."""


def _raise_problems(problems: Sequence[str], source: str, hint: str) -> None:
    if problems:
        listed = "\n  ".join(problems)
        raise UnsupportedConfigError(f"{source} cannot be converted:\n  {listed}\n{hint}")


def guess_task(folder_name: str) -> str:
    """The task a Hub folder name announces (``...-coco-instance``), else "panoptic".

    "panoptic" switches every output on (what the official panoptic configs do).
    """
    lowered = folder_name.lower()
    for task in ("panoptic", "instance", "semantic"):
        if task in lowered:
            return task
    return "panoptic"


def id2label_names(hf_config: Mapping[str, Any], source: str) -> List[str]:
    """Class names by contiguous id from ``id2label``.

    Raises:
        UnsupportedConfigError: no ``id2label``, or ids that are not 0..K-1.
    """
    id2label = hf_config.get("id2label")
    if not id2label:
        raise UnsupportedConfigError(f"{source}: config.json has no id2label (the class names).")
    by_id = {int(key): str(value) for key, value in id2label.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise UnsupportedConfigError(
            f"{source}: id2label ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}."
        )
    return [by_id[index] for index in range(len(by_id))]


def _setting(hf_config: Mapping, preprocessor: Optional[Mapping], names: Sequence[str]) -> Any:
    for source in (hf_config, preprocessor or {}):
        for name in names:
            if source.get(name) is not None:
                return source[name]
    return None


def stuff_ids_from_hf(
    hf_config: Mapping[str, Any], preprocessor: Optional[Mapping[str, Any]]
) -> Optional[Set[int]]:
    """The stuff classes (``label_ids_to_fuse``) stored in the folder, or None."""
    fused = _setting(hf_config, preprocessor, ("label_ids_to_fuse",))
    return None if fused is None else {int(index) for index in fused}


def _stage_strides(patch_size: int, stages: Sequence[int]) -> List[int]:
    return [patch_size * 2 ** (stage - 1) for stage in stages]


def _swin_out_stages(swin: Mapping[str, Any], problems: List[str]) -> List[int]:
    """Stage numbers (1-based) of the backbone outputs."""
    names = swin.get("out_features")
    if names is None and swin.get("out_indices") is not None:
        names = [f"stage{index}" for index in swin["out_indices"]]
    if names is None:
        names = [f"stage{index + 1}" for index in range(len(swin["depths"]))]
    stages = []
    for name in names:
        if not (name.startswith("stage") and name[5:].isdigit()):
            problems.append(f"backbone_config.out_features: {name!r} is not a Swin stage")
            continue
        stages.append(int(name[5:]))
    if len(stages) < _HF_FEATURE_LEVELS:
        problems.append(
            f"backbone_config.out_features {names}: the pixel decoder needs at least "
            f"{_HF_FEATURE_LEVELS} backbone outputs"
        )
    return stages


def config_from_hf(
    hf_config: Mapping[str, Any],
    preprocessor: Optional[Mapping[str, Any]],
    *,
    metadata_name: str,
    task: str,
    source: str,
) -> CfgNode:
    """Our config for the model a Hugging Face ``config.json`` describes.

    Args:
        hf_config: the parsed ``config.json``.
        preprocessor: the parsed ``preprocessor_config.json``, or None (transformers'
            defaults: ImageNet mean and std).
        metadata_name: data set name whose metadata holds the classes (DATASETS.TRAIN and
            DATASETS.TEST; MaskFormer reads thing classes from the first).
        task: "panoptic", "instance" or "semantic": which outputs are switched on.
        source: the folder, for messages.

    Returns:
        The config, not frozen; INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST keep detectron2's
        800 / 1333 (transformers' processor settings for the Hub models resize to 384).

    Raises:
        UnsupportedConfigError: listing every setting this implementation cannot express.
    """
    if task not in TASK_SWITCHES:
        raise ValueError(f"task must be one of {sorted(TASK_SWITCHES)}, got {task!r}.")
    problems: List[str] = []
    if hf_config.get("model_type") != "mask2former":
        problems.append(f"model_type is {hf_config.get('model_type')!r}, not 'mask2former'")
    hf = {**_MASK2FORMER_DEFAULTS, **hf_config}
    backbone = hf.get("backbone_config")
    if not isinstance(backbone, Mapping) or backbone.get("model_type") != "swin":
        described = backbone.get("model_type") if isinstance(backbone, Mapping) else backbone
        problems.append(
            f"backbone_config: {described!r}; only Swin backbones (model_type 'swin') convert"
        )
        _raise_problems(problems, source, "")
    swin = {**_SWIN_DEFAULTS, **backbone}
    class_names = id2label_names(hf, source)

    expected = {
        "backbone_config.use_absolute_embeddings": (swin["use_absolute_embeddings"], False),
        "backbone_config.hidden_act": (swin["hidden_act"], "gelu"),
        "backbone_config.layer_norm_eps": (swin["layer_norm_eps"], 1e-5),
        "backbone_config.num_channels": (swin["num_channels"], 3),
        "activation_function": (hf["activation_function"], "relu"),
        "enforce_input_projection": (hf["enforce_input_projection"], False),
    }
    for key, (value, wanted) in expected.items():
        if value != wanted:
            problems.append(f"{key} is {value!r}; only {wanted!r} is supported")
    for key in ("patch_size", "image_size"):
        if not isinstance(swin[key], int):
            problems.append(f"backbone_config.{key} is {swin[key]!r}; only a square size (int)")
    if hf["feature_size"] != hf["hidden_dim"]:
        # transformers keeps these projections in a plain list: they are not saved.
        problems.append(
            f"feature_size {hf['feature_size']} != hidden_dim {hf['hidden_dim']}: transformers "
            "does not save the transformer decoder's input projections"
        )
    stages = _swin_out_stages(swin, problems)
    if isinstance(swin["patch_size"], int) and stages:
        strides = _stage_strides(swin["patch_size"], stages)
        if list(hf["feature_strides"]) != strides:
            problems.append(
                f"feature_strides {list(hf['feature_strides'])} differ from the strides "
                f"{strides} of the backbone outputs {[f'stage{s}' for s in stages]}"
            )
    _raise_problems(problems, source, "")

    cfg = get_cfg()
    add_maskformer2_config(cfg)
    model = cfg.MODEL
    model.META_ARCHITECTURE = "MaskFormer"
    model.BACKBONE.NAME = "D2SwinTransformer"
    model.WEIGHTS = ""
    _set_pixel_statistics(cfg, preprocessor)
    cfg.INPUT.FORMAT = "RGB"

    out_features = [f"res{stage + 1}" for stage in stages]
    model.SWIN.PRETRAIN_IMG_SIZE = swin["image_size"]
    model.SWIN.PATCH_SIZE = swin["patch_size"]
    model.SWIN.EMBED_DIM = swin["embed_dim"]
    model.SWIN.DEPTHS = list(swin["depths"])
    model.SWIN.NUM_HEADS = list(swin["num_heads"])
    model.SWIN.WINDOW_SIZE = swin["window_size"]
    model.SWIN.MLP_RATIO = float(swin["mlp_ratio"])
    model.SWIN.QKV_BIAS = bool(swin["qkv_bias"])
    model.SWIN.DROP_RATE = float(swin["hidden_dropout_prob"])
    model.SWIN.ATTN_DROP_RATE = float(swin["attention_probs_dropout_prob"])
    model.SWIN.DROP_PATH_RATE = float(swin["drop_path_rate"])
    model.SWIN.APE = False
    model.SWIN.PATCH_NORM = True
    model.SWIN.OUT_FEATURES = out_features

    head = model.SEM_SEG_HEAD
    head.NAME = "MaskFormerHead"
    head.NUM_CLASSES = len(class_names)
    head.IGNORE_VALUE = hf["ignore_value"]
    head.CONVS_DIM = hf["feature_size"]
    head.MASK_DIM = hf["mask_feature_size"]
    head.NORM = "GN"
    head.NORM_NUM_GROUPS = _HF_GROUP_NORM_GROUPS
    head.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    head.IN_FEATURES = out_features
    # transformers' deformable encoder reads the last three (lowest-resolution) outputs.
    head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = out_features[-_HF_FEATURE_LEVELS:]
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = _HF_SAMPLING_POINTS
    # One head count for the deformable encoder and the transformer decoder in transformers.
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = hf["num_attention_heads"]
    head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = hf["encoder_feedforward_dim"]
    head.TRANSFORMER_ENC_LAYERS = hf["encoder_layers"]
    head.COMMON_STRIDE = hf["common_stride"]

    mask_former = model.MASK_FORMER
    mask_former.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    mask_former.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"
    mask_former.HIDDEN_DIM = hf["hidden_dim"]
    mask_former.NUM_OBJECT_QUERIES = hf["num_queries"]
    mask_former.NHEADS = hf["num_attention_heads"]
    # transformers applies this dropout in both decoders, we only in the pixel decoder's
    # encoder (the official behaviour); no difference in inference.
    mask_former.DROPOUT = float(hf["dropout"])
    mask_former.DIM_FEEDFORWARD = hf["dim_feedforward"]
    # Same meaning on both sides: the prediction from the learnable queries counts as one.
    mask_former.DEC_LAYERS = hf["decoder_layers"]
    mask_former.PRE_NORM = bool(hf["pre_norm"])
    mask_former.ENFORCE_INPUT_PROJ = False
    mask_former.NUM_FEATURE_LEVELS = _HF_FEATURE_LEVELS
    mask_former.MASK_ATTENTION_THRESHOLD = _HF_MASK_ATTENTION_THRESHOLD
    mask_former.SIZE_DIVISIBILITY = 32
    mask_former.DEEP_SUPERVISION = bool(hf["use_auxiliary_loss"])
    mask_former.NO_OBJECT_WEIGHT = float(hf["no_object_weight"])
    mask_former.CLASS_WEIGHT = float(hf["class_weight"])
    mask_former.MASK_WEIGHT = float(hf["mask_weight"])
    mask_former.DICE_WEIGHT = float(hf["dice_weight"])
    mask_former.TRAIN_NUM_POINTS = hf["train_num_points"]
    mask_former.OVERSAMPLE_RATIO = float(hf["oversample_ratio"])
    mask_former.IMPORTANCE_SAMPLE_RATIO = float(hf["importance_sample_ratio"])
    for key, value in TASK_SWITCHES[task].items():
        mask_former.TEST[key] = value
    for key, names, default in _TEST_SETTINGS:
        value = _setting(hf_config, preprocessor, names)
        mask_former.TEST[key] = float(default if value is None else value)

    cfg.DATASETS.TRAIN = (metadata_name,)
    cfg.DATASETS.TEST = (metadata_name,)
    return cfg


def _set_pixel_statistics(cfg: CfgNode, preprocessor: Optional[Mapping[str, Any]]) -> None:
    """PIXEL_MEAN / PIXEL_STD on 0..255 images equal to the processor's normalisation.

    transformers computes ``(x * rescale_factor - mean) / std``, which is
    ``(x - mean / rescale_factor) / (std / rescale_factor)``.
    """
    processor = preprocessor or {}
    scale = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1
    if processor.get("do_normalize", True):
        mean = processor.get("image_mean", _IMAGENET_MEAN)
        std = processor.get("image_std", _IMAGENET_STD)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    cfg.MODEL.PIXEL_MEAN = [float(value) / scale for value in mean]
    cfg.MODEL.PIXEL_STD = [float(value) / scale for value in std]


def _d2_problems(cfg: CfgNode) -> List[str]:
    """Our settings transformers' Mask2Former cannot express."""
    model, head, mask_former = cfg.MODEL, cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER
    wanted = {
        "MODEL.META_ARCHITECTURE": (model.META_ARCHITECTURE, "MaskFormer"),
        "MODEL.BACKBONE.NAME": (model.BACKBONE.NAME, "D2SwinTransformer"),
        "MODEL.SEM_SEG_HEAD.NAME": (head.NAME, "MaskFormerHead"),
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": (
            head.PIXEL_DECODER_NAME,
            "MSDeformAttnPixelDecoder",
        ),
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": (
            mask_former.TRANSFORMER_DECODER_NAME,
            "MultiScaleMaskedTransformerDecoder",
        ),
        "MODEL.SEM_SEG_HEAD.NORM": (head.NORM, "GN"),
        "MODEL.SEM_SEG_HEAD.NORM_NUM_GROUPS": (head.NORM_NUM_GROUPS, _HF_GROUP_NORM_GROUPS),
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": (
            head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            _HF_SAMPLING_POINTS,
        ),
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": (
            head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            mask_former.NHEADS,
        ),
        "MODEL.MASK_FORMER.NUM_FEATURE_LEVELS": (
            mask_former.NUM_FEATURE_LEVELS,
            _HF_FEATURE_LEVELS,
        ),
        "MODEL.MASK_FORMER.MASK_ATTENTION_THRESHOLD": (
            mask_former.MASK_ATTENTION_THRESHOLD,
            _HF_MASK_ATTENTION_THRESHOLD,
        ),
        "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": (mask_former.ENFORCE_INPUT_PROJ, False),
        "MODEL.MASK_FORMER.HIDDEN_DIM": (mask_former.HIDDEN_DIM, head.CONVS_DIM),
        "MODEL.SWIN.APE": (model.SWIN.APE, False),
        "MODEL.SWIN.PATCH_NORM": (model.SWIN.PATCH_NORM, True),
        "MODEL.SWIN.QK_SCALE": (model.SWIN.QK_SCALE, None),
        "INPUT.FORMAT": (cfg.INPUT.FORMAT, "RGB"),
        "MODEL.SEM_SEG_HEAD.IN_FEATURES": (list(head.IN_FEATURES), list(model.SWIN.OUT_FEATURES)),
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": (
            sorted(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            sorted(list(head.IN_FEATURES)[-_HF_FEATURE_LEVELS:]),
        ),
    }
    return [
        f"{key} is {value!r}; transformers' Mask2Former needs {needed!r}"
        for key, (value, needed) in wanted.items()
        if value != needed
    ]


def hf_config_from_d2(
    cfg: CfgNode, class_names: Sequence[str], stuff_ids: Optional[Set[int]]
) -> Dict[str, Any]:
    """The keyword arguments of transformers' ``Mask2FormerConfig`` for our model.

    The backbone is given as a ``backbone_config`` dict (``model_type`` "swin"); the
    test-time settings and the stuff classes (when there are any) are added under the names
    this module reads back.

    Raises:
        UnsupportedConfigError: listing every setting transformers cannot express.
    """
    _raise_problems(
        _d2_problems(cfg),
        "This model",
        "Convert a Swin Mask2Former built with the official architecture settings.",
    )
    model, head, mask_former = cfg.MODEL, cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER
    stages = [int(name[3:]) - 1 for name in model.SWIN.OUT_FEATURES]
    swin = {
        "model_type": "swin",
        "image_size": model.SWIN.PRETRAIN_IMG_SIZE,
        "patch_size": model.SWIN.PATCH_SIZE,
        "num_channels": 3,
        "embed_dim": model.SWIN.EMBED_DIM,
        "depths": list(model.SWIN.DEPTHS),
        "num_heads": list(model.SWIN.NUM_HEADS),
        "window_size": model.SWIN.WINDOW_SIZE,
        "mlp_ratio": float(model.SWIN.MLP_RATIO),
        "qkv_bias": bool(model.SWIN.QKV_BIAS),
        "hidden_dropout_prob": float(model.SWIN.DROP_RATE),
        "attention_probs_dropout_prob": float(model.SWIN.ATTN_DROP_RATE),
        "drop_path_rate": float(model.SWIN.DROP_PATH_RATE),
        "hidden_act": "gelu",
        "use_absolute_embeddings": False,
        "out_features": [f"stage{stage}" for stage in stages],
    }
    test = mask_former.TEST
    config = {
        "backbone_config": swin,
        "feature_size": head.CONVS_DIM,
        "mask_feature_size": head.MASK_DIM,
        "hidden_dim": mask_former.HIDDEN_DIM,
        "encoder_feedforward_dim": head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
        "activation_function": "relu",
        "encoder_layers": head.TRANSFORMER_ENC_LAYERS,
        "decoder_layers": mask_former.DEC_LAYERS,
        "num_attention_heads": mask_former.NHEADS,
        "dropout": float(mask_former.DROPOUT),
        "dim_feedforward": mask_former.DIM_FEEDFORWARD,
        "pre_norm": bool(mask_former.PRE_NORM),
        "enforce_input_projection": False,
        "common_stride": head.COMMON_STRIDE,
        "ignore_value": head.IGNORE_VALUE,
        "num_queries": mask_former.NUM_OBJECT_QUERIES,
        "no_object_weight": float(mask_former.NO_OBJECT_WEIGHT),
        "class_weight": float(mask_former.CLASS_WEIGHT),
        "mask_weight": float(mask_former.MASK_WEIGHT),
        "dice_weight": float(mask_former.DICE_WEIGHT),
        "train_num_points": mask_former.TRAIN_NUM_POINTS,
        "oversample_ratio": float(mask_former.OVERSAMPLE_RATIO),
        "importance_sample_ratio": float(mask_former.IMPORTANCE_SAMPLE_RATIO),
        "use_auxiliary_loss": bool(mask_former.DEEP_SUPERVISION),
        "feature_strides": _stage_strides(model.SWIN.PATCH_SIZE, stages),
        "id2label": dict(enumerate(class_names)),
        "label2id": {name: index for index, name in enumerate(class_names)},
        "object_mask_threshold": float(test.OBJECT_MASK_THRESHOLD),
        "overlap_mask_area_threshold": float(test.OVERLAP_THRESHOLD),
        "mask_threshold": float(test.MASK_THRESHOLD),
    }
    if stuff_ids:
        config["label_ids_to_fuse"] = sorted(stuff_ids)
    return config


def hf_preprocessor_from_d2(cfg: CfgNode) -> Dict[str, Any]:
    """Keyword arguments of transformers' ``Mask2FormerImageProcessor`` for our inputs."""
    scale = 1 / 255
    resize = cfg.INPUT.MIN_SIZE_TEST > 0
    settings: Dict[str, Any] = {
        "do_rescale": True,
        "rescale_factor": scale,
        "do_normalize": True,
        "image_mean": [value * scale for value in cfg.MODEL.PIXEL_MEAN],
        "image_std": [value * scale for value in cfg.MODEL.PIXEL_STD],
        "size_divisor": 32,
        "ignore_index": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        "do_resize": resize,
    }
    if resize:
        settings["size"] = {
            "shortest_edge": cfg.INPUT.MIN_SIZE_TEST,
            "longest_edge": cfg.INPUT.MAX_SIZE_TEST,
        }
    return settings
