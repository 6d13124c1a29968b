"""Tests of the shipped YAML configs: they load, carry the official values, and build models.

Where the official release's configs are at hand (``../shared/gpu/baseline/Mask2Former/configs``
next to the repository), every one of its configs, image and video (youtubevis), must exist
here at the same path and merge to the same value for every key.

The end-to-end test builds a model from every shipped config with overrides that shrink it
(narrow heads, few queries, tiny Swin widths; the ResNet depths, Swin depths, windows and class
counts stay), runs a training step on two small images (one without instances), or two clips
for the video configs, and then inference on an image or a 3-frame video. Configs that give
the same model after the overrides are tested once.
"""

import glob
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from helpers import shrunk_config

from mask2former.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")
ALL_CONFIGS = sorted(
    os.path.relpath(p, CONFIG_DIR)
    for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
)
MODEL_CONFIGS = [p for p in ALL_CONFIGS if not os.path.basename(p).startswith("Base-")]

# The official release's configs, when a copy sits next to the repository.
RELEASE_CONFIG_DIR = os.path.join(
    os.path.dirname(REPO), "shared", "gpu", "baseline", "Mask2Former", "configs"
)
# Folders of the video instance segmentation configs (VideoMaskFormer), and our own.
VIDEO_FOLDERS = ("youtubevis_2019", "youtubevis_2021")
VIDEO_CONFIGS = ("shapes/video_maskformer2_R18.yaml",)


def _release_configs():
    if not os.path.isdir(RELEASE_CONFIG_DIR):
        return []
    paths = glob.glob(os.path.join(RELEASE_CONFIG_DIR, "**", "*.yaml"), recursive=True)
    return sorted(os.path.relpath(p, RELEASE_CONFIG_DIR) for p in paths)


RELEASE_CONFIGS = _release_configs()


def _is_video(path):
    return path.split(os.sep)[0] in VIDEO_FOLDERS or path in VIDEO_CONFIGS


# Facts of the official Mask2Former release: config path -> {key: value}.
OFFICIAL_VALUES = {
    "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml": {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 133,
        "MODEL.MASK_FORMER.DEC_LAYERS": 10,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100,
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 12544,
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 6,
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "MSDeformAttnPixelDecoder",
        "MODEL.RESNETS.DEPTH": 50,
        "SOLVER.MAX_ITER": 368750,
        "SOLVER.STEPS": (327778, 355092),
        "SOLVER.BASE_LR": 0.0001,
        "SOLVER.WEIGHT_DECAY": 0.05,
        "SOLVER.BACKBONE_MULTIPLIER": 0.1,
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 0.01,
        "INPUT.DATASET_MAPPER_NAME": "coco_panoptic_lsj",
        "INPUT.IMAGE_SIZE": 1024,
        "DATASETS.TEST": ("coco_2017_val_panoptic_with_sem_seg",),
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
    },
    "coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml": {
        "MODEL.BACKBONE.NAME": "D2SwinTransformer",
        "MODEL.SWIN.EMBED_DIM": 192,
        "MODEL.SWIN.NUM_HEADS": [6, 12, 24, 48],
        "MODEL.SWIN.WINDOW_SIZE": 12,
        "MODEL.SWIN.PRETRAIN_IMG_SIZE": 384,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 200,
        "SOLVER.MAX_ITER": 737500,
        "MODEL.WEIGHTS": "swin_large_patch4_window12_384_22k.pkl",
    },
    "coco/instance-segmentation/maskformer2_R101_bs16_50ep.yaml": {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 80,
        "MODEL.RESNETS.DEPTH": 101,
        "INPUT.DATASET_MAPPER_NAME": "coco_instance_lsj",
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON": True,
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": False,
    },
    "ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml": {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 150,
        "SOLVER.MAX_ITER": 160000,
        "SOLVER.LR_SCHEDULER_NAME": "WarmupPolyLR",
        "INPUT.CROP.SIZE": [512, 512],
        "INPUT.SIZE_DIVISIBILITY": 512,
        "INPUT.MIN_SIZE_TRAIN": (
            256,
            307,
            358,
            409,
            460,
            512,
            563,
            614,
            665,
            716,
            768,
            819,
            870,
            921,
            972,
            1024,
        ),
        "TEST.AUG.MIN_SIZES": [256, 384, 512, 640, 768, 896],
        "TEST.AUG.MAX_SIZE": 3584,
        "INPUT.DATASET_MAPPER_NAME": "mask_former_semantic",
    },
    "ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml": {
        "INPUT.CROP.SIZE": [640, 640],
        "INPUT.SIZE_DIVISIBILITY": 640,
        "INPUT.MIN_SIZE_TEST": 640,
        "INPUT.MAX_SIZE_TEST": 2560,
        "TEST.AUG.MAX_SIZE": 4480,
        "MODEL.SWIN.EMBED_DIM": 192,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100,
    },
    "ade20k/panoptic-segmentation/maskformer2_R50_bs16_160k.yaml": {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 150,
        "DATASETS.TRAIN": ("ade20k_panoptic_train",),
        "INPUT.DATASET_MAPPER_NAME": "mask_former_panoptic",
    },
    "ade20k/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k.yaml": {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 100,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 200,
        "INPUT.DATASET_MAPPER_NAME": "mask_former_instance",
    },
    "cityscapes/semantic-segmentation/maskformer2_R50_bs16_90k.yaml": {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 19,
        "MODEL.RESNETS.NORM": "SyncBN",
        "SOLVER.MAX_ITER": 90000,
        "INPUT.CROP.SIZE": [512, 1024],
        "INPUT.MIN_SIZE_TEST": 1024,
    },
    "cityscapes/instance-segmentation/maskformer2_R50_bs16_90k.yaml": {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 8,
        "DATASETS.TEST": ("cityscapes_fine_instance_seg_val",),
    },
    "mapillary-vistas/panoptic-segmentation/maskformer_R50_bs16_300k.yaml": {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 65,
        "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 65,
        "MODEL.MASK_FORMER.TEST.SEMANTIC_ON": True,
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.0,
        "SOLVER.MAX_ITER": 300000,
        "INPUT.CROP.SIZE": [1024, 1024],
        "INPUT.MIN_SIZE_TEST": 2048,
    },
    "mapillary-vistas/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_300k.yaml": {
        "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 65,
    },
    "ade20k/instance-segmentation/maskformer2_R50_bs16_160k.yaml": {
        "MODEL.MASK_FORMER.TEST.SEMANTIC_ON": True,
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON": True,
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
    },
    "ade20k/semantic-segmentation/maskformer2_R101_bs16_90k.yaml": {
        "MODEL.RESNETS.DEPTH": 101,
        "MODEL.RESNETS.NORM": "SyncBN",
        "SOLVER.MAX_ITER": 160000,
    },
    "youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml": {
        "MODEL.META_ARCHITECTURE": "VideoMaskFormer",
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": "VideoMultiScaleMaskedTransformerDecoder",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 40,
        "DATASETS.TRAIN": ("ytvis_2019_train",),
        "DATASETS.TEST": ("ytvis_2019_val",),
        "SOLVER.MAX_ITER": 6000,
        "SOLVER.STEPS": (4000,),
        "INPUT.SAMPLING_FRAME_NUM": 2,
        "INPUT.MIN_SIZE_TRAIN": (360, 480),
        "INPUT.MIN_SIZE_TEST": 360,
        "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice_by_clip",
        "INPUT.RANDOM_FLIP": "flip_by_clip",
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON": True,
    },
    "youtubevis_2021/swin/video_maskformer2_swin_large_IN21k_384_bs16_8ep.yaml": {
        "DATASETS.TRAIN": ("ytvis_2021_train",),
        "SOLVER.MAX_ITER": 8000,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 200,
        "MODEL.SWIN.EMBED_DIM": 192,
        "INPUT.MIN_SIZE_TEST": 360,
    },
}

# Our second names for release configs: path -> the release config it is.
ALIASES = {
    "ade20k/semantic-segmentation/maskformer2_R101_bs16_160k.yaml": (
        "ade20k/semantic-segmentation/maskformer2_R101_bs16_90k.yaml"
    ),
    "mapillary-vistas/panoptic-segmentation/maskformer2_R50_bs16_300k.yaml": (
        "mapillary-vistas/panoptic-segmentation/maskformer_R50_bs16_300k.yaml"
    ),
}


def _get(cfg, dotted_key):
    for name in dotted_key.split("."):
        cfg = cfg[name]
    return cfg


@pytest.mark.parametrize("path", ALL_CONFIGS)
def test_config_loads_without_unknown_keys(path):
    cfg = load_config(os.path.join(CONFIG_DIR, path))
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES > 0


@pytest.mark.parametrize("path", MODEL_CONFIGS)
def test_model_config_is_mask2former(path):
    cfg = load_config(os.path.join(CONFIG_DIR, path))
    video = "Video" if _is_video(path) else ""
    assert cfg.MODEL.META_ARCHITECTURE == f"{video}MaskFormer"
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "MaskFormerHead"
    decoder = f"{video}MultiScaleMaskedTransformerDecoder"
    assert cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME == decoder
    assert cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE == "multi_scale_pixel_decoder"
    test_flags = cfg.MODEL.MASK_FORMER.TEST
    assert test_flags.SEMANTIC_ON or test_flags.INSTANCE_ON or test_flags.PANOPTIC_ON
    assert cfg.DATASETS.TRAIN and cfg.DATASETS.TEST


def test_official_tree_is_complete():
    expected = (
        [
            f"coco/{task}-segmentation/{name}"
            for task in ("panoptic", "instance")
            for name in [
                "maskformer2_R50_bs16_50ep.yaml",
                "maskformer2_R101_bs16_50ep.yaml",
                "swin/maskformer2_swin_tiny_bs16_50ep.yaml",
                "swin/maskformer2_swin_small_bs16_50ep.yaml",
                "swin/maskformer2_swin_base_384_bs16_50ep.yaml",
                "swin/maskformer2_swin_base_IN21k_384_bs16_50ep.yaml",
                "swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
            ]
        ]
        + [
            f"cityscapes/{task}-segmentation/{name}"
            for task in ("semantic", "instance", "panoptic")
            for name in [
                "maskformer2_R50_bs16_90k.yaml",
                "maskformer2_R101_bs16_90k.yaml",
                "swin/maskformer2_swin_tiny_bs16_90k.yaml",
                "swin/maskformer2_swin_small_bs16_90k.yaml",
                "swin/maskformer2_swin_base_IN21k_384_bs16_90k.yaml",
                "swin/maskformer2_swin_large_IN21k_384_bs16_90k.yaml",
            ]
        ]
        + [
            "ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml",
            "ade20k/semantic-segmentation/maskformer2_R101_bs16_90k.yaml",
            "ade20k/semantic-segmentation/swin/maskformer2_swin_tiny_bs16_160k.yaml",
            "ade20k/semantic-segmentation/swin/maskformer2_swin_small_bs16_160k.yaml",
            "ade20k/semantic-segmentation/swin/maskformer2_swin_base_384_bs16_160k_res640.yaml",
            "ade20k/semantic-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_160k_res640.yaml",
            "ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml",
            "ade20k/panoptic-segmentation/maskformer2_R50_bs16_160k.yaml",
            "ade20k/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k.yaml",
            "ade20k/instance-segmentation/maskformer2_R50_bs16_160k.yaml",
            "ade20k/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k.yaml",
            "mapillary-vistas/semantic-segmentation/maskformer2_R50_bs16_300k.yaml",
            "mapillary-vistas/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_300k.yaml",
            "mapillary-vistas/panoptic-segmentation/maskformer_R50_bs16_300k.yaml",
            "mapillary-vistas/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_300k.yaml",
        ]
        + [
            f"youtubevis_{year}/{name}"
            for year in (2019, 2021)
            for name in [
                "video_maskformer2_R50_bs16_8ep.yaml",
                "video_maskformer2_R101_bs16_8ep.yaml",
                "swin/video_maskformer2_swin_tiny_bs16_8ep.yaml",
                "swin/video_maskformer2_swin_small_bs16_8ep.yaml",
                "swin/video_maskformer2_swin_base_IN21k_384_bs16_8ep.yaml",
                "swin/video_maskformer2_swin_large_IN21k_384_bs16_8ep.yaml",
            ]
        ]
    )
    missing = [p for p in expected if p not in ALL_CONFIGS]
    assert not missing


def _flatten(node, prefix=""):
    """Dotted key -> value for every leaf of a config."""
    out = {}
    for name, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


@pytest.mark.skipif(
    not RELEASE_CONFIGS,
    reason=f"the official release's configs are not at {RELEASE_CONFIG_DIR}",
)
@pytest.mark.parametrize("path", RELEASE_CONFIGS or ["(none)"])
def test_release_config_merges_to_the_same_values(path):
    ours = os.path.join(CONFIG_DIR, path)
    assert os.path.isfile(ours), f"the release's configs/{path} has no counterpart here"
    release = _flatten(load_config(os.path.join(RELEASE_CONFIG_DIR, path)))
    shipped = _flatten(load_config(ours))
    assert release.keys() == shipped.keys()
    differences = {
        key: {"release": release[key], "ours": shipped[key]}
        for key in release
        if release[key] != shipped[key]
    }
    assert not differences


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_is_its_release_config(alias):
    assert load_config(os.path.join(CONFIG_DIR, alias)) == load_config(
        os.path.join(CONFIG_DIR, ALIASES[alias])
    )


@pytest.mark.parametrize("path", sorted(OFFICIAL_VALUES))
def test_official_values(path):
    cfg = load_config(os.path.join(CONFIG_DIR, path))
    for key, value in OFFICIAL_VALUES[path].items():
        actual = _get(cfg, key)
        if isinstance(value, (list, tuple)):
            assert list(actual) == list(value), key
        else:
            assert actual == value, key


def _distinct_models():
    """One representative config per model that the shrunk configs build."""
    representatives = {}
    for path in MODEL_CONFIGS:
        cfg = shrunk_config(path)
        key = cfg.MODEL.dump()
        representatives.setdefault(key, path)
    return sorted(representatives.values())


def _training_inputs(num_classes, generator):
    images = [torch.randint(0, 256, (3, 64, 80), generator=generator).float() for _ in range(2)]
    full = Instances((64, 80))
    masks = torch.zeros(2, 64, 80, dtype=torch.bool)
    masks[0, 5:30, 10:50] = True
    masks[1, 30:60, 40:75] = True
    full.gt_classes = torch.tensor([0, num_classes - 1])
    full.gt_masks = BitMasks(masks)
    empty = Instances((64, 80))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    empty.gt_masks = BitMasks(torch.zeros(0, 64, 80, dtype=torch.bool))
    return [{"image": images[0], "instances": full}, {"image": images[1], "instances": empty}]


def _video_training_inputs(num_classes, num_frames, generator):
    """Two clips of ``num_frames`` frames: one with the instances of ``_training_inputs`` (the
    second absent from the first frame: id -1, empty mask), one without instances."""
    clips = []
    for index in range(2):
        images, frames = [], []
        for frame in range(num_frames):
            inputs = _training_inputs(num_classes, generator)[index]
            instances = inputs["instances"]
            instances.gt_ids = torch.arange(len(instances))
            if frame == 0 and len(instances):
                instances.gt_ids[1] = -1
                instances.gt_masks.tensor[1] = False
            images.append(inputs["image"])
            frames.append(instances)
        clips.append({"image": images, "instances": frames})
    return clips


def _video_inference_failures(path, model, cfg, generator):
    """Infer a video of 3 frames at 70 x 90; what is wrong with the result."""
    frames = [torch.randint(0, 256, (3, 64, 80), generator=generator).float() for _ in range(3)]
    with torch.no_grad():
        (output,) = model([{"image": frames, "height": 70, "width": 90}])
    failures = []
    if output["image_size"] != (70, 90):
        failures.append(f"{path}: image_size {output['image_size']}")
    detections = len(output["pred_scores"])
    if detections > cfg.MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO:
        failures.append(f"{path}: {detections} detections")
    shapes = {tuple(mask.shape) for mask in output["pred_masks"]}
    if len(output["pred_masks"]) != detections or shapes - {(3, 70, 90)}:
        failures.append(f"{path}: {len(output['pred_masks'])} masks of shapes {shapes}")
    return failures


@pytest.mark.slow
def test_every_shipped_config_trains_and_infers(one_thread):
    failures = _train_and_infer_every_model()
    assert not failures, "\n".join(failures)


def _train_and_infer_every_model():
    generator = torch.Generator().manual_seed(0)
    failures = []
    for path in _distinct_models():
        torch.manual_seed(0)
        cfg = shrunk_config(path)
        model = build_model(cfg)
        model.train()
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        if _is_video(path):
            inputs = _video_training_inputs(num_classes, cfg.INPUT.SAMPLING_FRAME_NUM, generator)
        else:
            inputs = _training_inputs(num_classes, generator)
        losses = model(inputs)
        total = sum(losses.values())
        if not torch.isfinite(total):
            failures.append(f"{path}: non-finite loss {losses}")
            continue
        total.backward()
        no_grad = [
            name for name, p in model.named_parameters() if p.requires_grad and p.grad is None
        ]
        if no_grad:
            failures.append(f"{path}: no gradient for {no_grad[:5]}")
        model.eval()
        if _is_video(path):
            failures.extend(_video_inference_failures(path, model, cfg, generator))
            continue
        image = torch.randint(0, 256, (3, 64, 80), generator=generator).float()
        with torch.no_grad():
            (output,) = model([{"image": image, "height": 70, "width": 90}])
        flags = cfg.MODEL.MASK_FORMER.TEST
        expected = {
            "sem_seg": flags.SEMANTIC_ON,
            "instances": flags.INSTANCE_ON,
            "panoptic_seg": flags.PANOPTIC_ON,
        }
        for key, wanted in expected.items():
            if wanted and key not in output:
                failures.append(f"{path}: no {key!r} in the output")
        if flags.SEMANTIC_ON and tuple(output["sem_seg"].shape[-2:]) != (70, 90):
            failures.append(f"{path}: sem_seg of shape {tuple(output['sem_seg'].shape)}")
        if flags.PANOPTIC_ON and tuple(output["panoptic_seg"][0].shape) != (70, 90):
            failures.append(f"{path}: panoptic_seg of shape {output['panoptic_seg'][0].shape}")
        if flags.INSTANCE_ON and output["instances"].image_size != (70, 90):
            failures.append(f"{path}: instances of size {output['instances'].image_size}")
    return failures
