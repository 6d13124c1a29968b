"""Tests of mask2former.config: official defaults, declared keys, YAML merging, typo errors."""

import json

import pytest
from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.projects.deeplab import add_deeplab_config

from mask2former.config import UnknownConfigKeyError, add_maskformer2_config, load_config

# Defaults of the official Mask2Former release (add_maskformer2_config in its config.py).
OFFICIAL_DEFAULTS = {
    "INPUT.DATASET_MAPPER_NAME": "mask_former_semantic",
    "INPUT.COLOR_AUG_SSD": False,
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 1.0,
    "INPUT.SIZE_DIVISIBILITY": -1,
    "INPUT.IMAGE_SIZE": 1024,
    "INPUT.MIN_SCALE": 0.1,
    "INPUT.MAX_SCALE": 2.0,
    # add_maskformer2_video_config in the release's mask2former_video/config.py
    "INPUT.SAMPLING_FRAME_NUM": 2,
    "INPUT.SAMPLING_FRAME_RANGE": 20,
    "INPUT.SAMPLING_FRAME_SHUFFLE": False,
    "INPUT.AUGMENTATIONS": [],
    "SOLVER.WEIGHT_DECAY_EMBED": 0.0,
    "SOLVER.OPTIMIZER": "ADAMW",
    "SOLVER.BACKBONE_MULTIPLIER": 0.1,
    "MODEL.MASK_FORMER.DEEP_SUPERVISION": True,
    "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT": 0.1,
    "MODEL.MASK_FORMER.CLASS_WEIGHT": 1.0,
    "MODEL.MASK_FORMER.DICE_WEIGHT": 1.0,
    "MODEL.MASK_FORMER.MASK_WEIGHT": 20.0,
    "MODEL.MASK_FORMER.NHEADS": 8,
    "MODEL.MASK_FORMER.DROPOUT": 0.1,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 2048,
    "MODEL.MASK_FORMER.ENC_LAYERS": 0,
    "MODEL.MASK_FORMER.DEC_LAYERS": 6,
    "MODEL.MASK_FORMER.PRE_NORM": False,
    "MODEL.MASK_FORMER.HIDDEN_DIM": 256,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100,
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "res5",
    "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": False,
    "MODEL.MASK_FORMER.TEST.SEMANTIC_ON": True,
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON": False,
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": False,
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.0,
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.0,
    "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": False,
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": 32,
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": "MultiScaleMaskedTransformerDecoder",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 12544,
    "MODEL.MASK_FORMER.OVERSAMPLE_RATIO": 3.0,
    "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO": 0.75,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": 256,
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 0,
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "BasePixelDecoder",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": 4,
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": 8,
    "MODEL.SWIN.PRETRAIN_IMG_SIZE": 224,
    "MODEL.SWIN.PATCH_SIZE": 4,
    "MODEL.SWIN.EMBED_DIM": 96,
    "MODEL.SWIN.DEPTHS": [2, 2, 6, 2],
    "MODEL.SWIN.NUM_HEADS": [3, 6, 12, 24],
    "MODEL.SWIN.WINDOW_SIZE": 7,
    "MODEL.SWIN.MLP_RATIO": 4.0,
    "MODEL.SWIN.QKV_BIAS": True,
    "MODEL.SWIN.QK_SCALE": None,
    "MODEL.SWIN.DROP_RATE": 0.0,
    "MODEL.SWIN.ATTN_DROP_RATE": 0.0,
    "MODEL.SWIN.DROP_PATH_RATE": 0.3,
    "MODEL.SWIN.APE": False,
    "MODEL.SWIN.PATCH_NORM": True,
    "MODEL.SWIN.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.SWIN.USE_CHECKPOINT": False,
    # DeepLab-style keys (detectron2.projects.deeplab) that the official YAML files carry.
    "MODEL.RESNETS.STEM_TYPE": "deeplab",
    "MODEL.RESNETS.RES5_MULTI_GRID": [1, 2, 4],
    "SOLVER.POLY_LR_POWER": 0.9,
    "SOLVER.POLY_LR_CONSTANT_ENDING": 0.0,
}

# Keys this project adds: constants the official code hard-coded (the defaults are those
# hard-coded values), and the settings of features the official release lacks.
NEW_KEY_DEFAULTS = {
    "DATASETS.METADATA_FILE": "",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD": 1024,
    "MODEL.SEM_SEG_HEAD.NORM_NUM_GROUPS": 32,
    "MODEL.MASK_FORMER.MASK_ATTENTION_THRESHOLD": 0.5,
    "MODEL.MASK_FORMER.NUM_FEATURE_LEVELS": 3,
    "MODEL.MASK_FORMER.TEST.MASK_THRESHOLD": 0.5,
    "MODEL.MASK_FORMER.TEST.AUX_OUTPUTS_IN_EVAL": False,
    "MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO": 10,
    "MODEL.MASK_FORMER.TEST.FRAMES_PER_PASS": 4,
    "MODEL.MASK_FORMER.TEST.CLIP_LENGTH": 0,
    "MODEL.MASK_FORMER.TEST.CLIP_OVERLAP": 0,
    "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED": False,
    "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.SIZE": [512, 512],
    "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.STRIDE": [341, 341],
    "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.WINDOWS_PER_PASS": 1,
    "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.MERGE_THRESHOLD": 0.5,
    "SOLVER.AMP.PRECISION": "float16",
    "MODEL.SWIN.FROZEN_STAGES": -1,
    "SOLVER.GRADIENT_ACCUMULATION_STEPS": 1,
    "SOLVER.SAVE_SAFETENSORS": False,
    "DATASETS.EXCLUDE_FILE": "",
    "DATALOADER.MAX_BAD_SAMPLE_FRACTION": 0.01,
    "TEST.BOUNDARY_AP.ENABLED": False,
    "TEST.BOUNDARY_AP.DILATION_RATIO": 0.02,
    "TEST.AMP.ENABLED": False,
    "TEST.AMP.PRECISION": "float16",
    "MODEL_EMA.ENABLED": False,
    "MODEL_EMA.DECAY": 0.9999,
    "MODEL_EMA.WARMUP_ITERS": 2000,
    "MODEL_EMA.DEVICE": "",
    "MODEL_EMA.EVAL_RAW_WEIGHTS": True,
    "MODEL_EMA.USE_FOR_INFERENCE": True,
    "SOLVER.BEST_CHECKPOINTER.ENABLED": False,
    "SOLVER.BEST_CHECKPOINTER.METRIC": "",
    "SOLVER.BEST_CHECKPOINTER.MODE": "max",
}


def _get(cfg, dotted_key):
    node = cfg
    for name in dotted_key.split("."):
        node = node[name]
    return node


@pytest.fixture
def cfg():
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    return cfg


@pytest.mark.parametrize("key", sorted({**OFFICIAL_DEFAULTS, **NEW_KEY_DEFAULTS}))
def test_default_equals_official_value(cfg, key):
    expected = {**OFFICIAL_DEFAULTS, **NEW_KEY_DEFAULTS}[key]
    assert _get(cfg, key) == expected
    assert type(_get(cfg, key)) is type(expected)


def _leaf_keys(node, prefix=""):
    keys = set()
    for name, value in node.items():
        if isinstance(value, CfgNode):
            keys |= _leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_declares_exactly_the_keys_checked_here():
    with_deeplab = get_cfg()
    add_deeplab_config(with_deeplab)
    full = get_cfg()
    add_maskformer2_config(full)
    ours = _leaf_keys(full) - _leaf_keys(with_deeplab)
    deeplab_keys = {key for key in OFFICIAL_DEFAULTS if key in _leaf_keys(with_deeplab)}
    assert ours == set(OFFICIAL_DEFAULTS) - deeplab_keys | set(NEW_KEY_DEFAULTS)
    assert _leaf_keys(with_deeplab) <= _leaf_keys(full)


def _maskformer_v1_config():
    """A config as MaskFormer (v1)'s add_mask_former_config leaves it: MODEL.MASK_FORMER and
    the other v1 keys, none of the Mask2Former-only ones; values changed from the defaults."""
    cfg = get_cfg()
    add_deeplab_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_panoptic"
    cfg.INPUT.COLOR_AUG_SSD = True
    cfg.INPUT.SIZE_DIVISIBILITY = 512
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.5
    mask_former = cfg.MODEL.MASK_FORMER = CfgNode()
    mask_former.DEEP_SUPERVISION = False
    mask_former.NO_OBJECT_WEIGHT = 0.2
    mask_former.DICE_WEIGHT = 3.0
    mask_former.MASK_WEIGHT = 4.0
    mask_former.NHEADS = 4
    mask_former.DROPOUT = 0.0
    mask_former.DIM_FEEDFORWARD = 512
    mask_former.ENC_LAYERS = 2
    mask_former.DEC_LAYERS = 3
    mask_former.PRE_NORM = True
    mask_former.HIDDEN_DIM = 128
    mask_former.NUM_OBJECT_QUERIES = 50
    mask_former.TRANSFORMER_IN_FEATURE = "res4"
    mask_former.ENFORCE_INPUT_PROJ = True
    mask_former.TEST = CfgNode()
    mask_former.TEST.SEMANTIC_ON = False
    mask_former.TEST.PANOPTIC_ON = True
    mask_former.TEST.OBJECT_MASK_THRESHOLD = 0.7
    mask_former.TEST.OVERLAP_THRESHOLD = 0.6
    mask_former.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = True
    mask_former.SIZE_DIVISIBILITY = 64
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 128
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    return cfg


def test_completes_a_config_prepared_for_maskformer_v1(cfg):
    v1 = _maskformer_v1_config()
    v1_values = {key: _get(v1, key) for key in _leaf_keys(v1)}
    add_maskformer2_config(v1)
    assert _leaf_keys(v1) == _leaf_keys(cfg)
    for key in _leaf_keys(cfg):
        expected = v1_values[key] if key in v1_values else _get(cfg, key)
        assert _get(v1, key) == expected, key
    # a Mask2Former file that sets v2-only keys now merges into it
    v1.merge_from_other_cfg(CfgNode({"MODEL": {"MASK_FORMER": {"CLASS_WEIGHT": 2.0}}}))
    assert v1.MODEL.MASK_FORMER.CLASS_WEIGHT == 2.0


def test_add_config_is_idempotent_and_order_free(cfg):
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 10
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"
    add_maskformer2_config(cfg)
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10
    assert cfg.MODEL.RESNETS.STEM_TYPE == "basic"

    official_order = get_cfg()
    add_deeplab_config(official_order)
    add_maskformer2_config(official_order)
    reverse_order = get_cfg()
    add_maskformer2_config(reverse_order)
    add_deeplab_config(reverse_order)
    only_ours = get_cfg()
    add_maskformer2_config(only_ours)
    assert official_order == reverse_order == only_ours


BASE_YAML = """\
MODEL:
  META_ARCHITECTURE: "MaskFormer"
  BACKBONE:
    FREEZE_AT: 0
    NAME: "build_resnet_backbone"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  RESNETS:
    DEPTH: 50
    STEM_TYPE: "basic"  # not used
    STEM_OUT_CHANNELS: 64
    STRIDE_IN_1X1: False
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
    RES5_MULTI_GRID: [1, 1, 1]  # not used
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.0001
  WEIGHT_DECAY: 0.05
  OPTIMIZER: "ADAMW"
  BACKBONE_MULTIPLIER: 0.1
  POLY_LR_POWER: 0.9
INPUT:
  IMAGE_SIZE: 1024
  MIN_SCALE: 0.1
  MAX_SCALE: 2.0
  FORMAT: "RGB"
  DATASET_MAPPER_NAME: "coco_panoptic_lsj"
VERSION: 2
"""

MODEL_YAML = """\
_BASE_: Base-COCO-PanopticSegmentation.yaml
MODEL:
  SEM_SEG_HEAD:
    NAME: "MaskFormerHead"
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
    IGNORE_VALUE: 255
    NUM_CLASSES: 133
    LOSS_WEIGHT: 1.0
    CONVS_DIM: 256
    MASK_DIM: 256
    NORM: "GN"
    PIXEL_DECODER_NAME: "MSDeformAttnPixelDecoder"
    DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES: ["res3", "res4", "res5"]
    COMMON_STRIDE: 4
    TRANSFORMER_ENC_LAYERS: 6
  MASK_FORMER:
    TRANSFORMER_DECODER_NAME: "MultiScaleMaskedTransformerDecoder"
    TRANSFORMER_IN_FEATURE: "multi_scale_pixel_decoder"
    DEEP_SUPERVISION: True
    NO_OBJECT_WEIGHT: 0.1
    CLASS_WEIGHT: 2.0
    MASK_WEIGHT: 5.0
    DICE_WEIGHT: 5.0
    HIDDEN_DIM: 256
    NUM_OBJECT_QUERIES: 100
    NHEADS: 8
    DROPOUT: 0.0
    DIM_FEEDFORWARD: 2048
    ENC_LAYERS: 0
    PRE_NORM: False
    ENFORCE_INPUT_PROJ: False
    SIZE_DIVISIBILITY: 32
    DEC_LAYERS: 10  # 9 decoder layers, add one for the loss on learnable query
    TRAIN_NUM_POINTS: 12544
    OVERSAMPLE_RATIO: 3.0
    IMPORTANCE_SAMPLE_RATIO: 0.75
    TEST:
      SEMANTIC_ON: True
      INSTANCE_ON: True
      PANOPTIC_ON: True
      OVERLAP_THRESHOLD: 0.8
      OBJECT_MASK_THRESHOLD: 0.8
"""

SWIN_YAML = """\
_BASE_: ../maskformer2_R50_bs16_50ep.yaml
MODEL:
  BACKBONE:
    NAME: "D2SwinTransformer"
  SWIN:
    EMBED_DIM: 192
    DEPTHS: [2, 2, 18, 2]
    NUM_HEADS: [6, 12, 24, 48]
    WINDOW_SIZE: 12
    APE: False
    DROP_PATH_RATE: 0.3
    PATCH_NORM: True
    PRETRAIN_IMG_SIZE: 384
  WEIGHTS: "swin_large_patch4_window12_384_22k.pkl"
  MASK_FORMER:
    NUM_OBJECT_QUERIES: 200
"""


@pytest.fixture
def official_style_files(tmp_path):
    (tmp_path / "Base-COCO-PanopticSegmentation.yaml").write_text(BASE_YAML)
    (tmp_path / "maskformer2_R50_bs16_50ep.yaml").write_text(MODEL_YAML)
    (tmp_path / "swin").mkdir()
    (tmp_path / "swin" / "maskformer2_swin_large.yaml").write_text(SWIN_YAML)
    return tmp_path


def test_official_style_yaml_chain_merges(official_style_files):
    cfg = load_config(str(official_style_files / "swin" / "maskformer2_swin_large.yaml"))
    # from the leaf file
    assert cfg.MODEL.BACKBONE.NAME == "D2SwinTransformer"
    assert cfg.MODEL.SWIN.WINDOW_SIZE == 12
    assert cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE == 384
    assert cfg.MODEL.SWIN.DEPTHS == [2, 2, 18, 2]
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 200
    # from the middle file
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10
    assert cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON is True
    assert cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "MSDeformAttnPixelDecoder"
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 133
    # from the base file
    assert cfg.INPUT.DATASET_MAPPER_NAME == "coco_panoptic_lsj"
    assert cfg.MODEL.RESNETS.STEM_TYPE == "basic"
    assert cfg.MODEL.RESNETS.RES5_MULTI_GRID == [1, 1, 1]
    # untouched defaults
    assert cfg.MODEL.SWIN.MLP_RATIO == 4.0
    assert cfg.MODEL.MASK_FORMER.TEST.MASK_THRESHOLD == 0.5


def test_overrides_apply_after_file(official_style_files):
    path = str(official_style_files / "maskformer2_R50_bs16_50ep.yaml")
    cfg = load_config(path, ["MODEL.MASK_FORMER.DEC_LAYERS", "4", "MODEL.SWIN.QK_SCALE", "None"])
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == 4
    assert cfg.MODEL.SWIN.QK_SCALE is None


def test_typo_in_yaml_names_key_file_and_suggestion(official_style_files):
    path = official_style_files / "typo.yaml"
    path.write_text(
        "_BASE_: maskformer2_R50_bs16_50ep.yaml\n"
        "MODEL:\n  MASK_FORMER:\n    DEC_LAYER: 4\n  SWIN:\n    EMBEDDIM: 128\n"
    )
    with pytest.raises(UnknownConfigKeyError) as info:
        load_config(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "MODEL.MASK_FORMER.DEC_LAYER (did you mean MODEL.MASK_FORMER.DEC_LAYERS" in message
    assert "MODEL.SWIN.EMBEDDIM (did you mean MODEL.SWIN.EMBED_DIM" in message
    assert isinstance(info.value, KeyError)


def test_typo_in_parent_node_is_suggested(official_style_files):
    path = official_style_files / "typo.yaml"
    path.write_text("MODEL:\n  MASK_FORMR:\n    DEC_LAYERS: 4\n")
    with pytest.raises(UnknownConfigKeyError, match="did you mean MODEL.MASK_FORMER"):
        load_config(str(path))


def test_plain_detectron2_merge_also_names_the_key(official_style_files):
    path = official_style_files / "typo.yaml"
    path.write_text("MODEL:\n  MASK_FORMER:\n    DEC_LAYER: 4\n")
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    with pytest.raises(KeyError, match="MODEL.MASK_FORMER.DEC_LAYER"):
        cfg.merge_from_file(str(path))


def test_typo_in_overrides(official_style_files):
    path = str(official_style_files / "maskformer2_R50_bs16_50ep.yaml")
    with pytest.raises(UnknownConfigKeyError, match=r"opts.*\n.*SWIN.WINDOWSIZE.*WINDOW_SIZE"):
        load_config(path, ["MODEL.SWIN.WINDOWSIZE", "12"])
    with pytest.raises(ValueError, match="pairs"):
        load_config(path, ["MODEL.SWIN.WINDOW_SIZE"])


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


def _write_metadata_config(folder, table):
    (folder / "classes.json").write_text(json.dumps(table))
    path = folder / "model.yaml"
    path.write_text('DATASETS:\n  METADATA_FILE: "classes.json"\n')
    return str(path)


def test_metadata_file_is_registered_relative_to_the_config(tmp_path):
    categories = [
        {"id": 0, "name": "boat", "isthing": True},
        {"id": 1, "name": "sea", "isthing": False},
    ]
    path = _write_metadata_config(
        tmp_path, {"name": "test_config_classes", "categories": categories}
    )
    cfg = load_config(path)
    assert cfg.DATASETS.METADATA_FILE == str(tmp_path / "classes.json")
    metadata = MetadataCatalog.get("test_config_classes")
    assert metadata.stuff_classes == ["boat", "sea"]
    assert metadata.thing_classes == ["boat"]
    assert metadata.thing_dataset_id_to_contiguous_id == {0: 0}
    # loading again (another config, another process) replaces it without complaint
    categories[1]["name"] = "ocean"
    _write_metadata_config(tmp_path, {"name": "test_config_classes", "categories": categories})
    load_config(path)
    assert MetadataCatalog.get("test_config_classes").stuff_classes == ["boat", "ocean"]


@pytest.mark.parametrize(
    "table, message",
    [
        ({"name": "x"}, "classes.json' must hold"),
        ({"name": "x", "categories": [{"id": 0, "name": "a"}]}, r"categories \[0\] lack"),
        (
            {"name": "coco_2017_val", "categories": [{"id": 0, "name": "a", "isthing": True}]},
            "'coco_2017_val': it is a registered data set",
        ),
    ],
)
def test_bad_metadata_file_is_named(tmp_path, table, message):
    path = _write_metadata_config(tmp_path, table)
    with pytest.raises(ValueError, match=message):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_config(path, ["DATASETS.METADATA_FILE", "missing.json"])
