"""Hugging Face transformers interoperability, on tiny random transformers models.

Each model is built with transformers (Swin backbone, few classes, queries and layers) and
written with ``save_pretrained``; our side reads only those folders. A random model with
transformers' initialisation predicts near-zero mask logits and the same class and mask for
every query, on which the comparisons below would hold trivially. So the weights are drawn
with a larger standard deviation and a few are rescaled (see ``_save_hf_model``): the mask
logits are of order 1-10, the queries keep distinct classes and masks, and on images of flat
coloured blocks the post-processed results have several segments.
"""

import json
import os

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_CONFIG, load_script, random_picture, run_python

transformers = pytest.importorskip("transformers", reason="pip install -r requirements.txt")
safetensors_torch = pytest.importorskip("safetensors.torch")

from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from mask2former import Predictor  # noqa: E402
from mask2former.config import load_config  # noqa: E402
from mask2former.interop.hf_config import (  # noqa: E402
    UnsupportedConfigError,
    config_from_hf,
    hf_config_from_d2,
    stuff_ids_from_hf,
)
from mask2former.interop.hf_state_dict import UnmappedKeysError  # noqa: E402
from mask2former.interop.huggingface import (  # noqa: E402
    convert_d2_checkpoint_to_hf,
    convert_d2_to_hf,
    convert_hf_to_d2,
    load_hf_folder,
)
from mask2former.modeling.postprocessing import (  # noqa: E402
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
)

TOLERANCE = 1e-4
# 384 x 384: transformers' post-processing resizes the mask logits to 384 x 384 whatever the
# input, so at this input size its resizing and the official one coincide.
SIZE = 384
# Block images on which the test models give several segments (checked by the tests).
PANOPTIC_IMAGE_SEED, INSTANCE_IMAGE_SEED, SEMANTIC_IMAGE_SEED = 3, 2, 3
MODELS = {
    # folder name (its suffix announces the task): settings of the tiny model
    "tiny-coco-panoptic": {
        "num_labels": 5,
        "num_queries": 8,
        "decoder_layers": 4,
        "window_size": 3,
        "pre_norm": False,
        "depths": [1, 1, 2, 1],
        "label_ids_to_fuse": [3, 4],
        # test-time settings stored in config.json, as our d2 -> HF converter writes them
        "object_mask_threshold": 0.5,
        "overlap_mask_area_threshold": 0.3,
        "seed": 0,
    },
    "tiny-coco-instance": {
        "num_labels": 4,
        "num_queries": 6,
        "decoder_layers": 3,
        "window_size": 2,
        "pre_norm": True,
        "depths": [1, 1, 1, 1],
        "label_ids_to_fuse": None,
        "seed": 1,
    },
    "tiny-ade-semantic": {
        "num_labels": 6,
        "num_queries": 7,
        "decoder_layers": 5,
        # Swin-L's layout (window 12, 18 blocks in stage 3, 384 px pre-training), narrow
        "window_size": 12,
        "pre_norm": False,
        "depths": [2, 2, 18, 2],
        "embed_dim": 24,
        "num_heads": [1, 2, 3, 6],
        "image_size": 384,
        "label_ids_to_fuse": None,
        "seed": 2,
    },
}


def _save_hf_model(
    folder,
    *,
    num_labels,
    num_queries,
    decoder_layers,
    window_size,
    pre_norm,
    depths,
    seed,
    embed_dim=16,
    num_heads=(1, 2, 2, 4),
    image_size=224,
    **stored_settings,
):
    torch.manual_seed(seed)
    swin = transformers.SwinConfig(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=list(num_heads),
        image_size=image_size,
        window_size=window_size,
        drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.Mask2FormerConfig(
        backbone_config=swin,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=64,
        encoder_layers=2,
        decoder_layers=decoder_layers,
        num_attention_heads=4,
        dim_feedforward=64,
        num_queries=num_queries,
        pre_norm=pre_norm,
        id2label={index: f"class{index}" for index in range(num_labels)},
        label2id={f"class{index}": index for index in range(num_labels)},
        init_std=0.2,
    )
    for key, value in stored_settings.items():
        if value is not None:
            setattr(config, key, value)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        # Confident classes.
        model.class_predictor.weight.mul_(8.0)
        # Decoder layers that change the queries less: each keeps its own class and mask.
        for layer in model.model.transformer_module.decoder.layers:
            for linear in (layer.cross_attn.out_proj, layer.self_attn.out_proj, layer.fc2):
                linear.weight.mul_(0.1)
        # Mask features without the large component all pixels share (the projection reads
        # ReLU outputs, all positive): masks of different sizes rather than all near-full.
        projection = model.model.pixel_level_module.decoder.mask_projection.weight
        projection.sub_(projection.mean(1, keepdim=True))
        # Sharp masks.
        model.model.transformer_module.decoder.mask_predictor.mask_embedder.layers[2].layers[
            0
        ].weight.mul_(3.0)
    model.save_pretrained(folder)
    transformers.Mask2FormerImageProcessor(do_resize=False).save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    folders = {}
    for name, settings in MODELS.items():
        folders[name] = str(root / name)
        _save_hf_model(folders[name], **settings)
    return folders


def _blocks(seed):
    """A SIZE x SIZE image of flat coloured rectangles on a flat background."""
    rng = np.random.default_rng(seed)
    image = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    image[:] = rng.integers(0, 256, 3)
    for _ in range(6):
        top, left = rng.integers(0, SIZE - 80, 2)
        height, width = rng.integers(60, 200, 2)
        image[top : top + height, left : left + width] = rng.integers(0, 256, 3)
    return image


def _hf_outputs(folder, image):
    model = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(folder).eval()
    processor = transformers.Mask2FormerImageProcessor.from_pretrained(folder)
    inputs = processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        return model(pixel_values=inputs["pixel_values"]), processor


def _our_head_outputs(model, image):
    """Our network on an image whose sides are multiples of 32 (so nothing is padded)."""
    tensor = torch.as_tensor(image.transpose(2, 0, 1).copy()).float()
    with torch.no_grad():
        images = model.preprocess_image([{"image": tensor}])
        return model.sem_seg_head(model.backbone(images.tensor))


def _our_model(folder):
    converted = load_hf_folder(folder)
    converted.cfg.MODEL.DEVICE = "cpu"
    model = build_model(converted.cfg).eval()
    model.load_state_dict(converted.state_dict)
    return model, converted


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_equal_transformers(hf_folders, name):
    """At 160 x 224 no stage map is a multiple of the windows: both sides pad them."""
    image = random_picture(160, 224)
    hf_outputs, _ = _hf_outputs(hf_folders[name], image)
    model, _ = _our_model(hf_folders[name])
    ours = _our_head_outputs(model, image)
    assert hf_outputs.masks_queries_logits.abs().max() > 1.0, "test model too close to zero"
    torch.testing.assert_close(
        ours["pred_logits"], hf_outputs.class_queries_logits, atol=TOLERANCE, rtol=0
    )
    torch.testing.assert_close(
        ours["pred_masks"], hf_outputs.masks_queries_logits, atol=TOLERANCE, rtol=0
    )


def _predictor(folder, extra_opts=(), **kwargs):
    # The image is given at the network's input size: no resizing on our side either.
    opts = ["INPUT.MIN_SIZE_TEST", SIZE, "INPUT.MAX_SIZE_TEST", SIZE, *extra_opts]
    return Predictor.from_hf(folder, device="cpu", opts=opts, **kwargs)


def _run_both(folder, image, extra_opts=()):
    """transformers' outputs and processor, our predictor, its prediction and raw outputs."""
    hf_outputs, processor = _hf_outputs(folder, image)
    predictor = _predictor(folder, extra_opts)
    raw = {}
    hook = predictor.model.sem_seg_head.register_forward_hook(
        lambda module, inputs, outputs: raw.update(outputs)
    )
    prediction = predictor(image)
    hook.remove()
    return (
        hf_outputs,
        processor,
        predictor,
        prediction,
        _Outputs(raw["pred_logits"], raw["pred_masks"]),
    )


class _Outputs:
    """What transformers' post-processing reads from a model output."""

    def __init__(self, class_logits, mask_logits):
        self.class_queries_logits = class_logits
        self.masks_queries_logits = mask_logits


def _agreement(a, b):
    return float((np.asarray(a) == np.asarray(b)).mean())


def _probabilities(outputs):
    """Mask probabilities of image 0 at SIZE x SIZE, resized as the official release does."""
    return resize_mask_logits(
        outputs.masks_queries_logits[0], (SIZE, SIZE), (SIZE, SIZE), (SIZE, SIZE)
    ).sigmoid()


def _segments(segments_info, label_key):
    return [(segment["id"], segment[label_key]) for segment in segments_info]


def test_panoptic_against_transformers(hf_folders):
    folder = hf_folders["tiny-coco-panoptic"]
    image = _blocks(seed=PANOPTIC_IMAGE_SEED)
    hf_outputs, processor, predictor, prediction, ours_raw = _run_both(folder, image)
    ours = prediction.panoptic
    # The stuff classes and thresholds the folder stores.
    test = predictor.cfg.MODEL.MASK_FORMER.TEST
    assert (test.OBJECT_MASK_THRESHOLD, test.OVERLAP_THRESHOLD) == (0.5, 0.3)
    assert predictor.metadata.thing_dataset_id_to_contiguous_id == {0: 0, 1: 1, 2: 2}
    assert len(ours.segments) >= 3 and {s["isthing"] for s in ours.segments} == {True, False}
    stored = {
        "threshold": 0.5,
        "overlap_mask_area_threshold": 0.3,
        "label_ids_to_fuse": {3, 4},
        "target_sizes": [(SIZE, SIZE)],
    }

    # Each side against its own definition. Ours equals the official definition
    # (tests/test_postprocessing.py holds our implementation to a reference) applied to
    # transformers' network outputs ...
    segment_ids, segments = panoptic_inference(
        hf_outputs.class_queries_logits[0],
        _probabilities(hf_outputs),
        thing_classes={0, 1, 2},
        object_mask_threshold=0.5,
        overlap_threshold=0.3,
        mask_threshold=0.5,
    )
    assert _segments(segments, "category_id") == _segments(ours.segments, "category_id")
    assert _agreement(segment_ids.numpy(), ours.segment_ids) >= 0.999
    # ... and transformers' post-processing gives the same results on our network's outputs
    # as on its own network's.
    (theirs,) = processor.post_process_panoptic_segmentation(hf_outputs, **stored)
    (from_ours,) = processor.post_process_panoptic_segmentation(ours_raw, **stored)
    assert len(theirs["segments_info"]) >= 2
    assert _segments(from_ours["segments_info"], "label_id") == _segments(
        theirs["segments_info"], "label_id"
    )
    assert _agreement(from_ours["segmentation"], theirs["segmentation"]) >= 0.999

    # Ours against transformers where the definitions coincide. By design they differ in
    # three ways, each avoided here: transformers measures a segment's own area on
    # score-weighted probabilities (an overlap threshold of 0 makes that moot), it can give a
    # merged stuff segment's id to a later segment (no stuff class here: every class a thing,
    # its default), and it gives every pixel to the best query where the official definition
    # leaves it void when that query's mask probability is below 0.5 (compared on the pixels
    # ours labels).
    segment_ids, segments = panoptic_inference(
        ours_raw.class_queries_logits[0],
        _probabilities(ours_raw),
        thing_classes=set(range(5)),
        object_mask_threshold=0.5,
        overlap_threshold=0.0,
        mask_threshold=0.5,
    )
    (theirs,) = processor.post_process_panoptic_segmentation(
        hf_outputs, threshold=0.5, overlap_mask_area_threshold=0.0, target_sizes=[(SIZE, SIZE)]
    )
    assert len(segments) >= 4, "the test model should give a few segments"
    assert _segments(segments, "category_id") == _segments(theirs["segments_info"], "label_id")
    labelled = segment_ids.numpy() > 0
    assert labelled.mean() > 0.5
    their_ids = theirs["segmentation"].numpy()
    assert _agreement(segment_ids.numpy()[labelled], their_ids[labelled]) >= 0.999


def test_instance_against_transformers(hf_folders):
    folder = hf_folders["tiny-coco-instance"]
    num_queries = MODELS["tiny-coco-instance"]["num_queries"]
    # transformers keeps the top num_queries (query, class) pairs; ours the top
    # TEST.DETECTIONS_PER_IMAGE (100 by default): make them equal.
    hf_outputs, processor, predictor, prediction, _ = _run_both(
        folder, _blocks(seed=INSTANCE_IMAGE_SEED), ["TEST.DETECTIONS_PER_IMAGE", num_queries]
    )
    assert predictor.cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON
    assert not predictor.cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON
    ours = prediction.instances
    (theirs,) = processor.post_process_instance_segmentation(
        hf_outputs, threshold=0.0, target_sizes=[(SIZE, SIZE)], return_binary_maps=True
    )
    # By design transformers drops empty masks (ours keeps them, with score 0) and returns
    # the pairs unsorted: compare the non-empty ones by decreasing score.
    keep = ours.masks.reshape(len(ours), -1).any(1)
    assert keep.sum() >= 3, "the test model should give a few instances"
    order = np.argsort([-s["score"] for s in theirs["segments_info"]], kind="stable")
    their_segments = [theirs["segments_info"][i] for i in order]
    their_masks = theirs["segmentation"].numpy()[order].astype(bool)
    assert ours.classes[keep].tolist() == [s["label_id"] for s in their_segments]
    # (transformers rounds scores to 6 decimals, and the networks differ by float rounding)
    np.testing.assert_allclose(ours.scores[keep], [s["score"] for s in their_segments], atol=1e-3)
    assert _agreement(ours.masks[keep], their_masks) >= 0.999

    # ours against its own definition, on transformers' network outputs
    reference = instance_inference(
        hf_outputs.class_queries_logits[0],
        _probabilities(hf_outputs),
        topk=num_queries,
        mask_threshold=0.5,
    )
    order = reference.scores.argsort(descending=True)
    assert reference.pred_classes[order].tolist() == ours.classes.tolist()
    assert _agreement(reference.pred_masks[order].numpy(), ours.masks) >= 0.999


def test_semantic_against_transformers(hf_folders):
    folder = hf_folders["tiny-ade-semantic"]
    hf_outputs, processor, predictor, prediction, _ = _run_both(
        folder, _blocks(seed=SEMANTIC_IMAGE_SEED)
    )
    assert predictor.cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON
    assert not predictor.cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON
    (theirs,) = processor.post_process_semantic_segmentation(
        hf_outputs, target_sizes=[(SIZE, SIZE)]
    )
    ours = prediction.semantic.label_map
    assert len(np.unique(ours)) >= 3, "the test model should give several classes"
    assert _agreement(ours, theirs.numpy()) >= 0.999


def _safetensors(folder):
    return safetensors_torch.load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_gives_the_same_tensors(hf_folders, name, tmp_path):
    model, converted = _our_model(hf_folders[name])
    convert_d2_to_hf(converted.cfg, model, tmp_path / "back")
    original, back = _safetensors(hf_folders[name]), _safetensors(tmp_path / "back")
    assert sorted(back) == sorted(original)
    for key, tensor in original.items():
        assert torch.equal(back[key], tensor), key
    with open(os.path.join(hf_folders[name], "config.json")) as f:
        original_config = json.load(f)
    with open(tmp_path / "back" / "config.json") as f:
        back_config = json.load(f)
    for key in (
        "id2label",
        "num_queries",
        "decoder_layers",
        "pre_norm",
        "feature_size",
        "hidden_dim",
        "encoder_layers",
        "label_ids_to_fuse",
    ):
        assert back_config.get(key) == original_config.get(key), key
    for key in ("embed_dim", "depths", "num_heads", "window_size", "image_size", "out_features"):
        assert back_config["backbone_config"][key] == original_config["backbone_config"][key]


SWIN_CONFIGS = [
    f"configs/coco/panoptic-segmentation/swin/maskformer2_swin_{size}.yaml"
    for size in (
        "tiny_bs16_50ep",
        "small_bs16_50ep",
        "base_384_bs16_50ep",
        "large_IN21k_384_bs16_100ep",
    )
]


@pytest.mark.parametrize("path", SWIN_CONFIGS)
def test_every_swin_size_converts_both_ways(path):
    """Our official Swin-T/S/B/L configs -> transformers' config classes -> ours: unchanged."""
    cfg = load_config(os.path.join(ROOT, path))
    names = [f"class{index}" for index in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    settings = hf_config_from_d2(cfg, names, stuff_ids={100, 132})
    hf_config = transformers.Mask2FormerConfig(**settings).to_dict()
    back = config_from_hf(hf_config, None, metadata_name="x", task="panoptic", source=path)
    for node in ("MODEL.SWIN", "MODEL.SEM_SEG_HEAD", "MODEL.MASK_FORMER"):
        ours, theirs = _get(cfg, node), _get(back, node)
        differing = {
            key: (ours[key], theirs[key])
            for key in ours
            if ours[key] != theirs[key] and key not in _NOT_CONVERTED.get(node, ())
        }
        assert differing == {}, node
    assert stuff_ids_from_hf(hf_config, None) == {100, 132}


# Keys with no counterpart in transformers' config (training-only or unused by these models).
_NOT_CONVERTED = {
    "MODEL.SWIN": ("USE_CHECKPOINT",),
    "MODEL.SEM_SEG_HEAD": (
        "LOSS_WEIGHT",
        "PROJECT_FEATURES",
        "PROJECT_CHANNELS",
        "ASPP_CHANNELS",
        "ASPP_DILATIONS",
        "ASPP_DROPOUT",
        "USE_DEPTHWISE_SEPARABLE_CONV",
    ),
    "MODEL.MASK_FORMER": ("ENC_LAYERS",),
}


def _get(cfg, dotted):
    for name in dotted.split("."):
        cfg = cfg[name]
    return cfg


def _write_our_swin_model(tmp_path):
    """A tiny Swin Mask2Former of ours, randomly initialised, saved like train_net does."""
    overrides = [
        "MODEL.DEVICE",
        "cpu",
        "MODEL.WEIGHTS",
        "",
        "MODEL.SWIN.EMBED_DIM",
        16,
        "MODEL.SWIN.DEPTHS",
        [1, 1, 1, 1],
        "MODEL.SWIN.NUM_HEADS",
        [1, 2, 2, 4],
        "MODEL.SWIN.WINDOW_SIZE",
        3,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM",
        32,
        "MODEL.SEM_SEG_HEAD.MASK_DIM",
        32,
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS",
        1,
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD",
        64,
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS",
        4,
        "MODEL.MASK_FORMER.HIDDEN_DIM",
        32,
        "MODEL.MASK_FORMER.NHEADS",
        4,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES",
        5,
        "MODEL.MASK_FORMER.DIM_FEEDFORWARD",
        64,
        "MODEL.MASK_FORMER.DEC_LAYERS",
        3,
    ]
    config = os.path.join(
        ROOT, "configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml"
    )
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    weights = str(tmp_path / "model_final.pth")
    torch.save({"model": model.state_dict()}, weights)
    return config, overrides, cfg, model, weights


def test_our_model_loads_in_transformers_with_the_same_outputs(tmp_path):
    config, overrides, cfg, model, weights = _write_our_swin_model(tmp_path)
    folder = convert_d2_checkpoint_to_hf(
        config, tmp_path / "hf", [*overrides, "MODEL.WEIGHTS", weights]
    )
    hf_model, info = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(
        folder, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    assert list(hf_model.config.id2label.values()) == list(metadata.stuff_classes)
    image = random_picture(128, 160, seed=6)
    processor = transformers.Mask2FormerImageProcessor.from_pretrained(folder)
    pixel_values = processor(images=[image], do_resize=False, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        theirs = hf_model.eval()(pixel_values=pixel_values)
    ours = _our_head_outputs(model, image)
    torch.testing.assert_close(
        ours["pred_logits"], theirs.class_queries_logits, atol=TOLERANCE, rtol=0
    )
    torch.testing.assert_close(
        ours["pred_masks"], theirs.masks_queries_logits, atol=TOLERANCE, rtol=0
    )


def test_converted_folder_predicts_like_from_hf(hf_folders, tmp_path):
    folder = hf_folders["tiny-coco-panoptic"]
    paths = convert_hf_to_d2(folder, tmp_path / "ours")
    image = random_picture(96, 128, seed=7)
    direct = Predictor.from_hf(folder, device="cpu")(image)
    # A fresh process has no metadata: load_config registers the class table the YAML names.
    name = load_config(paths["config"]).DATASETS.TEST[0]
    MetadataCatalog.remove(name)
    predictor = Predictor(paths["config"], device="cpu")
    assert predictor.class_names == [f"class{index}" for index in range(5)]
    assert set(predictor.metadata.thing_dataset_id_to_contiguous_id.values()) == {0, 1, 2}
    converted = predictor(image)
    np.testing.assert_array_equal(converted.panoptic.segment_ids, direct.panoptic.segment_ids)
    np.testing.assert_array_equal(converted.semantic.label_map, direct.semantic.label_map)


def test_unknown_parameter_is_named_and_stops(hf_folders, tmp_path):
    state = _safetensors(hf_folders["tiny-coco-instance"])
    state["model.pixel_level_module.encoder.extra_adapter.weight"] = torch.zeros(2)
    del state["model.transformer_module.decoder.layers.0.self_attn.k_proj.weight"]
    broken = tmp_path / "broken"
    broken.mkdir()
    safetensors_torch.save_file(state, str(broken / "model.safetensors"))
    with open(os.path.join(hf_folders["tiny-coco-instance"], "config.json")) as f:
        (broken / "config.json").write_text(f.read())
    with pytest.raises(UnmappedKeysError, match="extra_adapter.weight"):
        load_hf_folder(broken)
    del state["model.pixel_level_module.encoder.extra_adapter.weight"]
    safetensors_torch.save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(UnmappedKeysError, match=r"in_proj_weight .*k_proj\.weight"):
        load_hf_folder(broken)


def test_other_backbone_is_named_and_stops(hf_folders, tmp_path):
    folder = tmp_path / "resnet"
    folder.mkdir()
    with open(os.path.join(hf_folders["tiny-coco-instance"], "config.json")) as f:
        config = json.load(f)
    config["backbone_config"] = {"model_type": "resnet", "depths": [3, 4, 6, 3]}
    (folder / "config.json").write_text(json.dumps(config))
    safetensors_torch.save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(UnsupportedConfigError, match="'resnet'; only Swin"):
        load_hf_folder(folder)


def test_our_resnet_model_is_refused_by_name(tmp_path):
    config = TINY_CONFIG
    cfg = load_config(config)
    model = build_model(cfg)
    with pytest.raises(UnsupportedConfigError, match="MODEL.BACKBONE.NAME is 'build_resnet"):
        convert_d2_to_hf(cfg, model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_missing_folder_and_pickle_weights_are_explained(hf_folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="hf download facebook/mask2former"):
        Predictor.from_hf("facebook/mask2former-swin-tiny-coco-panoptic")
    folder = tmp_path / "bin"
    folder.mkdir()
    with open(os.path.join(hf_folders["tiny-coco-instance"], "config.json")) as f:
        (folder / "config.json").write_text(f.read())
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="pickle"):
        Predictor.from_hf(folder)


def test_tools_convert_both_ways(hf_folders, tmp_path, capsys):
    to_d2 = load_script("tools/convert-hf-to-d2.py")
    to_hf = load_script("tools/convert-d2-to-hf.py")
    folder = hf_folders["tiny-ade-semantic"]
    assert to_d2.main([folder, str(tmp_path / "d2")]) == 0
    cfg = load_config(str(tmp_path / "d2" / "config.yaml"))
    assert cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON and not cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 6
    assert (
        to_hf.main(["--config-file", str(tmp_path / "d2" / "config.yaml"), str(tmp_path / "hf")])
        == 0
    )
    back = _safetensors(tmp_path / "hf")
    for key, tensor in _safetensors(folder).items():
        assert torch.equal(back[key], tensor), key
    assert to_d2.main([str(tmp_path / "missing"), str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_package_imports_without_transformers_and_safetensors(tmp_path):
    blocker = (
        "import sys\n"
        "for name in ('transformers', 'safetensors', 'safetensors.torch'):\n"
        "    sys.modules[name] = None\n"
        "import mask2former\n"
        "try:\n"
        f"    mask2former.Predictor.from_hf({str(tmp_path)!r})\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "from mask2former.interop.huggingface import convert_d2_to_hf\n"
        "try:\n"
        f"    convert_d2_to_hf(None, None, {str(tmp_path / 'out')!r})\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"not read")
    result = run_python(blocker)
    assert "needs the safetensors package: pip install safetensors" in result.stdout
    assert "needs transformers: pip install transformers" in result.stdout
