"""Tests of MaskFormerHead: wiring of pixel decoder and transformer decoder from a config."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_sem_seg_head

import mask2former.modeling  # noqa: F401  (registers the head)
from mask2former.config import add_maskformer2_config, load_config
from mask2former.modeling.pixel_decoder.ops import MSDeformAttn

CHANNELS = {"res2": 8, "res3": 16, "res4": 24, "res5": 40}
R50_CHANNELS = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
COCO_R50 = "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"


def _shapes(channels):
    return {name: ShapeSpec(channels=c, stride=2 ** int(name[-1])) for name, c in channels.items()}


def _features(batch=2, height=64, width=96):
    torch.manual_seed(1)
    return {
        name: torch.randn(batch, c, height // 2 ** int(name[-1]), width // 2 ** int(name[-1]))
        for name, c in CHANNELS.items()
    }


def _cfg(pixel_decoder="MSDeformAttnPixelDecoder"):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    head = cfg.MODEL.SEM_SEG_HEAD
    head.NAME = "MaskFormerHead"
    head.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    head.PIXEL_DECODER_NAME = pixel_decoder
    head.NUM_CLASSES = 4
    head.CONVS_DIM = 32
    head.MASK_DIM = 16
    head.NORM = "GN"
    head.NORM_NUM_GROUPS = 8
    head.TRANSFORMER_ENC_LAYERS = 1
    head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 64
    mask_former = cfg.MODEL.MASK_FORMER
    mask_former.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"
    mask_former.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    mask_former.HIDDEN_DIM = 32
    mask_former.NHEADS = 4
    mask_former.DIM_FEEDFORWARD = 64
    mask_former.NUM_OBJECT_QUERIES = 5
    mask_former.DEC_LAYERS = 4
    mask_former.DROPOUT = 0.0
    return cfg


def _head(pixel_decoder="MSDeformAttnPixelDecoder", channels=CHANNELS):
    torch.manual_seed(0)
    return build_sem_seg_head(_cfg(pixel_decoder), _shapes(channels))


@pytest.mark.parametrize("pixel_decoder", ["MSDeformAttnPixelDecoder", "BasePixelDecoder"])
def test_head_outputs(pixel_decoder):
    head = _head(pixel_decoder)
    assert type(head) is SEM_SEG_HEADS_REGISTRY.get("MaskFormerHead")
    out = head(_features())
    assert out["pred_logits"].shape == (2, 5, 5)
    assert out["pred_masks"].shape == (2, 5, 16, 24)
    assert len(out["aux_outputs"]) == 3
    assert torch.isfinite(out["pred_masks"]).all()


@pytest.mark.parametrize("pixel_decoder", ["MSDeformAttnPixelDecoder", "BasePixelDecoder"])
def test_num_feature_levels_reaches_both_decoders(pixel_decoder):
    cfg = _cfg(pixel_decoder)
    cfg.MODEL.MASK_FORMER.NUM_FEATURE_LEVELS = 2
    head = build_sem_seg_head(cfg, _shapes(CHANNELS))
    _, multi_scale = head.pixel_decoder(_features())
    assert [tuple(f.shape[-2:]) for f in multi_scale] == [(2, 3), (4, 6)]
    assert head.predictor.level_embed.weight.shape == (2, 32)
    assert head(_features())["pred_masks"].shape == (2, 5, 16, 24)


def test_state_dict_prefixes_are_official():
    keys = list(_head().state_dict())
    assert all(key.startswith(("pixel_decoder.", "predictor.")) for key in keys)
    assert "pixel_decoder.transformer.level_embed" in keys
    assert "predictor.query_feat.weight" in keys


def test_in_features_filter_ignores_other_backbone_outputs():
    shapes = _shapes(CHANNELS)
    shapes["res6"] = ShapeSpec(channels=7, stride=64)
    head = build_sem_seg_head(_cfg(), shapes)
    features = _features()
    features["res6"] = torch.randn(2, 7, 1, 2)
    assert head(features)["pred_masks"].shape == (2, 5, 16, 24)


def test_missing_in_feature_is_an_error():
    shapes = _shapes(CHANNELS)
    del shapes["res2"]
    with pytest.raises(ValueError, match="IN_FEATURES"):
        build_sem_seg_head(_cfg(), shapes)


@pytest.mark.parametrize("value", ["res5", "transformer_encoder", "pixel_embedding"])
def test_unsupported_transformer_in_feature_is_an_error(value):
    cfg = _cfg()
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = value
    with pytest.raises(ValueError, match="TRANSFORMER_IN_FEATURE"):
        build_sem_seg_head(cfg, _shapes(CHANNELS))


def test_every_parameter_gets_a_gradient():
    head = _head()
    for module in head.modules():
        if isinstance(module, MSDeformAttn):
            # Zero at initialisation, which would cut the gradient to the queries.
            torch.nn.init.normal_(module.sampling_offsets.weight, std=0.01)
            torch.nn.init.normal_(module.attention_weights.weight, std=0.01)
    out = head(_features())
    loss = out["pred_logits"].square().sum() + out["pred_masks"].square().sum()
    for aux in out["aux_outputs"]:
        loss = loss + aux["pred_logits"].square().sum() + aux["pred_masks"].square().sum()
    loss.backward()
    no_grad = [
        key
        for key, parameter in head.named_parameters()
        if parameter.grad is None or not parameter.grad.abs().sum() > 0
    ]
    assert no_grad == []


def test_head_under_bfloat16_autocast():
    head = _head().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(_features())
    assert out["pred_masks"].dtype == torch.bfloat16
    assert torch.isfinite(out["pred_logits"].float()).all()
    assert torch.isfinite(out["pred_masks"].float()).all()


@pytest.mark.skipif(not os.path.exists(COCO_R50), reason=f"{COCO_R50} not shipped")
def test_official_coco_r50_config_builds_the_official_head():
    cfg = load_config(COCO_R50)
    head = build_sem_seg_head(cfg, _shapes(R50_CHANNELS))
    state = head.state_dict()
    # 12 input projection tensors, level embed, 6 encoder layers x 16, mask features (2),
    # adapter_1 (3), layer_1 (3); 9 decoder layers x 18; decoder_norm (2), query_feat,
    # query_embed, level_embed, class_embed (2), mask_embed (6).
    assert len(state) == 12 + 1 + 6 * 16 + 2 + 3 + 3 + 9 * 18 + 13
    assert state["pixel_decoder.transformer.encoder.layers.5.linear1.weight"].shape == (1024, 256)
    assert state["predictor.class_embed.weight"].shape == (134, 256)
    assert state["predictor.query_feat.weight"].shape == (100, 256)
    assert "predictor.transformer_ffn_layers.8.linear2.weight" in state
    assert "predictor.transformer_ffn_layers.9.linear2.weight" not in state
    assert state["predictor.mask_embed.layers.2.weight"].shape == (256, 256)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_head_under_cuda_autocast_matches_float32(dtype):
    head = _head().cuda().eval()
    features = {name: value.cuda() for name, value in _features().items()}
    with torch.no_grad():
        reference = head(features)
        with torch.autocast("cuda", dtype=dtype):
            mask_features, _ = head.pixel_decoder(features)
            out = head(features)
    assert mask_features.dtype == dtype  # the pixel decoder runs in reduced precision
    assert torch.isfinite(out["pred_masks"].float()).all()
    probabilities = out["pred_logits"].float().softmax(-1)
    torch.testing.assert_close(
        probabilities, reference["pred_logits"].softmax(-1), atol=0.05, rtol=0
    )
