"""Tests of the pixel decoders, their registry and the sine position encoding."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from mask2former.config import add_maskformer2_config
from mask2former.modeling.pixel_decoder import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from mask2former.modeling.pixel_decoder.fpn import BasePixelDecoder
from mask2former.modeling.pixel_decoder.msdeform_attn import (
    MSDeformAttnEncoder,
)
from mask2former.modeling.pixel_decoder.ops import MSDeformAttn
from mask2former.modeling.position_encoding import PositionEmbeddingSine

R50_CHANNELS = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
TINY_CHANNELS = {"res2": 8, "res3": 16, "res4": 24, "res5": 40}


def _shapes(channels):
    return {name: ShapeSpec(channels=c, stride=2 ** int(name[-1])) for name, c in channels.items()}


def _features(channels, batch=2, height=64, width=96):
    return {
        name: torch.randn(batch, c, height // 2 ** int(name[-1]), width // 2 ** int(name[-1]))
        for name, c in channels.items()
    }


def _cfg(decoder="MSDeformAttnPixelDecoder", conv_dim=32, mask_dim=16, layers=2, groups=8, ffn=64):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    head = cfg.MODEL.SEM_SEG_HEAD
    head.PIXEL_DECODER_NAME = decoder
    head.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    head.CONVS_DIM = conv_dim
    head.MASK_DIM = mask_dim
    head.NORM = "GN"
    head.NORM_NUM_GROUPS = groups
    head.TRANSFORMER_ENC_LAYERS = layers
    head.COMMON_STRIDE = 4
    if ffn is not None:  # None keeps the declared default
        head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = ffn
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    return cfg


def _tiny_msdeform(**overrides):
    torch.manual_seed(0)
    cfg = _cfg(**overrides)
    return build_pixel_decoder(cfg, _shapes(TINY_CHANNELS))


def _expected_msdeform_keys(channels, conv_dim, mask_dim, ffn, layers, heads, points):
    """Official MSDeformAttnPixelDecoder state dict, derived from the architecture."""
    encoder_inputs = ["res5", "res4", "res3"]  # input projections: lowest resolution first
    levels = len(encoder_inputs)
    expected = {}
    for index, name in enumerate(encoder_inputs):
        expected[f"input_proj.{index}.0.weight"] = (conv_dim, channels[name], 1, 1)
        expected[f"input_proj.{index}.0.bias"] = (conv_dim,)
        expected[f"input_proj.{index}.1.weight"] = (conv_dim,)
        expected[f"input_proj.{index}.1.bias"] = (conv_dim,)
    expected["transformer.level_embed"] = (levels, conv_dim)
    for i in range(layers):
        prefix = f"transformer.encoder.layers.{i}."
        attn = prefix + "self_attn."
        expected[attn + "sampling_offsets.weight"] = (heads * levels * points * 2, conv_dim)
        expected[attn + "sampling_offsets.bias"] = (heads * levels * points * 2,)
        expected[attn + "attention_weights.weight"] = (heads * levels * points, conv_dim)
        expected[attn + "attention_weights.bias"] = (heads * levels * points,)
        for proj in ("value_proj", "output_proj"):
            expected[attn + proj + ".weight"] = (conv_dim, conv_dim)
            expected[attn + proj + ".bias"] = (conv_dim,)
        for norm in ("norm1", "norm2"):
            expected[prefix + norm + ".weight"] = (conv_dim,)
            expected[prefix + norm + ".bias"] = (conv_dim,)
        expected[prefix + "linear1.weight"] = (ffn, conv_dim)
        expected[prefix + "linear1.bias"] = (ffn,)
        expected[prefix + "linear2.weight"] = (conv_dim, ffn)
        expected[prefix + "linear2.bias"] = (conv_dim,)
    expected["mask_features.weight"] = (mask_dim, conv_dim, 1, 1)
    expected["mask_features.bias"] = (mask_dim,)
    # One FPN level (res2, stride 4) below the encoder; convs with GroupNorm have no bias.
    expected["adapter_1.weight"] = (conv_dim, channels["res2"], 1, 1)
    expected["layer_1.weight"] = (conv_dim, conv_dim, 3, 3)
    for conv in ("adapter_1", "layer_1"):
        expected[conv + ".norm.weight"] = (conv_dim,)
        expected[conv + ".norm.bias"] = (conv_dim,)
    return expected


def _shape_table(module):
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def test_msdeform_state_dict_matches_official_r50_layout():
    cfg = _cfg(conv_dim=256, mask_dim=256, layers=6, groups=32, ffn=None)
    decoder = build_pixel_decoder(cfg, _shapes(R50_CHANNELS))
    expected = _expected_msdeform_keys(
        R50_CHANNELS, conv_dim=256, mask_dim=256, ffn=1024, layers=6, heads=8, points=4
    )
    assert _shape_table(decoder) == expected


def test_msdeform_reads_architecture_constants_from_config():
    cfg = _cfg(conv_dim=32, mask_dim=16, layers=1, groups=4)
    head = cfg.MODEL.SEM_SEG_HEAD
    head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 48
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 2
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 3
    decoder = build_pixel_decoder(cfg, _shapes(TINY_CHANNELS))
    expected = _expected_msdeform_keys(
        TINY_CHANNELS, conv_dim=32, mask_dim=16, ffn=48, layers=1, heads=2, points=3
    )
    assert _shape_table(decoder) == expected
    assert decoder.input_proj[0][1].num_groups == 4
    assert decoder.adapter_1.norm.num_groups == 4


def test_msdeform_two_encoder_levels_add_fpn_levels():
    cfg = _cfg(layers=1)
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res4", "res5"]
    decoder = build_pixel_decoder(cfg, _shapes(TINY_CHANNELS))
    keys = decoder.state_dict().keys()
    # res3 and res2 go through the FPN; adapter_k counts from the finest.
    assert decoder.state_dict()["adapter_2.weight"].shape[1] == TINY_CHANNELS["res3"]
    assert "adapter_3.weight" not in keys
    assert decoder.transformer.level_embed.shape == (2, 32)
    mask_features, multi_scale = decoder(_features(TINY_CHANNELS))
    assert mask_features.shape == (2, 16, 16, 24)
    assert [tuple(f.shape[-2:]) for f in multi_scale] == [(2, 3), (4, 6), (8, 12)]


@pytest.mark.parametrize("name", ["MSDeformAttnPixelDecoder", "BasePixelDecoder"])
def test_forward_shapes_and_order(name):
    torch.manual_seed(0)
    decoder = build_pixel_decoder(_cfg(decoder=name), _shapes(TINY_CHANNELS))
    assert isinstance(decoder, PIXEL_DECODER_REGISTRY.get(name))
    mask_features, multi_scale = decoder(_features(TINY_CHANNELS, height=64, width=96))
    assert mask_features.shape == (2, 16, 16, 24)
    assert mask_features.dtype == torch.float32
    assert [tuple(f.shape) for f in multi_scale] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    assert all(torch.isfinite(f).all() for f in [mask_features, *multi_scale])


@pytest.mark.parametrize("name", ["MSDeformAttnPixelDecoder", "BasePixelDecoder"])
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    decoder = build_pixel_decoder(_cfg(decoder=name), _shapes(TINY_CHANNELS))
    for module in decoder.modules():
        if isinstance(module, MSDeformAttn):
            # Zero at initialisation, which would cut the gradient to the queries.
            torch.nn.init.normal_(module.sampling_offsets.weight, std=0.01)
            torch.nn.init.normal_(module.attention_weights.weight, std=0.01)
    mask_features, multi_scale = decoder(_features(TINY_CHANNELS))
    # Squares so that GroupNorm/LayerNorm outputs do not sum to a constant.
    (mask_features.square().sum() + sum(f.square().sum() for f in multi_scale)).backward()
    no_grad = [
        key
        for key, parameter in decoder.named_parameters()
        if parameter.grad is None or not parameter.grad.abs().sum() > 0
    ]
    assert no_grad == []


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 0.1), (torch.float16, 0.02)])
def test_msdeform_under_autocast_matches_float32_on_a_realistic_size(dtype, tolerance):
    """A 512 x 2048 input: the finest encoder level is 64 x 256, where a grid coordinate
    rounded to bfloat16 is up to half a pixel off (0.26 error here, against 0.04 when the
    sampling is done in float32: the rounding of the layers themselves)."""
    decoder = _tiny_msdeform().eval()
    features = _features(TINY_CHANNELS, batch=1, height=512, width=2048)
    with torch.no_grad():
        expected = decoder(features)
        with torch.autocast("cpu", dtype=dtype):
            actual = decoder(features)
    for name, a, e in zip(
        ["mask features", "level 0", "level 1", "level 2"],
        [actual[0], *actual[1]],
        [expected[0], *expected[1]],
    ):
        assert a.dtype == dtype, name
        # outputs of GroupNorm / LayerNorm'd features: unit scale
        torch.testing.assert_close(
            a.float(), e, rtol=0, atol=tolerance, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_reference_points_are_pixel_centres():
    points = MSDeformAttnEncoder(
        d_model=8, num_heads=1, num_encoder_layers=1, num_levels=2
    ).encoder.reference_points([(2, 4), (1, 2)], 3, torch.device("cpu"))
    assert points.shape == (3, 2 * 4 + 1 * 2, 2, 2)
    # Position 5 of level 0 is row 1, column 1: centre ((1 + 0.5) / 4, (1 + 0.5) / 2).
    torch.testing.assert_close(points[0, 5, 0], torch.tensor([0.375, 0.75]))
    torch.testing.assert_close(points[2, 8, 1], torch.tensor([0.25, 0.5]))


def test_base_pixel_decoder_state_dict_matches_official_layout():
    decoder = BasePixelDecoder(_shapes(R50_CHANNELS), conv_dim=256, mask_dim=256, norm="GN")
    expected = {}
    for k, name in enumerate(["res2", "res3", "res4"], start=1):
        expected[f"adapter_{k}.weight"] = (256, R50_CHANNELS[name], 1, 1)
        expected[f"adapter_{k}.norm.weight"] = (256,)
        expected[f"adapter_{k}.norm.bias"] = (256,)
    for k in range(1, 4):
        expected[f"layer_{k}.weight"] = (256, 256, 3, 3)
        expected[f"layer_{k}.norm.weight"] = (256,)
        expected[f"layer_{k}.norm.bias"] = (256,)
    expected["layer_4.weight"] = (256, R50_CHANNELS["res5"], 3, 3)
    expected["layer_4.norm.weight"] = (256,)
    expected["layer_4.norm.bias"] = (256,)
    expected["mask_features.weight"] = (256, 256, 3, 3)
    expected["mask_features.bias"] = (256,)
    assert _shape_table(decoder) == expected


def test_base_pixel_decoder_without_norm_has_biases():
    decoder = BasePixelDecoder(_shapes(TINY_CHANNELS), conv_dim=16, mask_dim=8, norm="")
    keys = set(decoder.state_dict())
    assert {"adapter_1.bias", "layer_4.bias"} <= keys
    assert not any(".norm." in key for key in keys)


def test_unknown_pixel_decoder_name_is_an_error():
    with pytest.raises(KeyError, match="NoSuchDecoder"):
        build_pixel_decoder(_cfg(decoder="NoSuchDecoder"), _shapes(TINY_CHANNELS))


def test_encoder_feature_missing_from_inputs_is_an_error():
    cfg = _cfg()
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4"]
    with pytest.raises(ValueError, match="DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES"):
        build_pixel_decoder(cfg, _shapes(TINY_CHANNELS))


def test_position_encoding_formula_unnormalised():
    # Four channels per axis: wavelengths T^(0/4), T^(0/4), T^(2/4), T^(2/4) = 1, 1, 100, 100.
    encoding = PositionEmbeddingSine(num_pos_feats=4, temperature=10000)
    pos = encoding(torch.zeros(1, 3, 2, 3))
    assert pos.shape == (1, 8, 2, 3)
    y, x = 2.0, 1.0  # row 1, column 0: 1-based cumulative positions
    expected = [
        math.sin(y),
        math.cos(y),
        math.sin(y / 100),
        math.cos(y / 100),
        math.sin(x),
        math.cos(x),
        math.sin(x / 100),
        math.cos(x / 100),
    ]
    torch.testing.assert_close(pos[0, :, 1, 0], torch.tensor(expected))


def test_position_encoding_normalised_properties():
    encoding = PositionEmbeddingSine(num_pos_feats=16, normalize=True)
    pos = encoding(torch.zeros(2, 5, 7, 9))
    assert pos.shape == (2, 32, 7, 9)
    assert pos.abs().max() <= 1.0
    flat = pos[0].flatten(1).T  # (H * W, C)
    assert torch.cdist(flat, flat).add(torch.eye(63)).min() > 1e-3  # distinct positions
    torch.testing.assert_close(pos[0], pos[1])
    # Normalised: the last row/column sits at 2 pi, whatever the map size.
    torch.testing.assert_close(
        pos[0, 0, -1], torch.full((9,), math.sin(2 * math.pi)), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        pos[0, 16, :, -1], torch.full((7,), math.sin(2 * math.pi)), atol=1e-4, rtol=0
    )


def test_position_encoding_with_mask_normalises_by_valid_extent():
    encoding = PositionEmbeddingSine(num_pos_feats=8, normalize=True)
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, :, 3:] = True
    pos = encoding(torch.zeros(1, 1, 4, 6), mask)
    unpadded = encoding(torch.zeros(1, 1, 4, 3))
    torch.testing.assert_close(pos[..., :3], unpadded)


def test_position_encoding_dtype_follows_input_and_is_fp32_accurate():
    encoding = PositionEmbeddingSine(num_pos_feats=16, normalize=True)
    reference = encoding(torch.zeros(1, 1, 5, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = encoding(torch.zeros(1, 1, 5, 6, dtype=torch.bfloat16))
    assert reference.dtype == torch.float32
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference, atol=1e-2, rtol=0)


def test_position_encoding_rejects_bad_arguments():
    with pytest.raises(ValueError, match="normalize"):
        PositionEmbeddingSine(8, normalize=False, scale=1.0)
    with pytest.raises(ValueError, match="even"):
        PositionEmbeddingSine(7)


def test_msdeform_plumbing_without_encoder_layers():
    # With no encoder layers the encoder is the identity: the outputs are the input
    # projections, lowest resolution first, and the FPN/mask-feature path on top of them.
    decoder = _tiny_msdeform(layers=0).eval()
    features = _features(TINY_CHANNELS)
    with torch.no_grad():
        mask_features, multi_scale = decoder(features)
        for projection, name, output in zip(
            decoder.input_proj, ["res5", "res4", "res3"], multi_scale
        ):
            torch.testing.assert_close(output, projection(features[name]))
        lateral = decoder.adapter_1(features["res2"])
        upsampled = torch.nn.functional.interpolate(
            multi_scale[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
        )
        expected = decoder.mask_features(decoder.layer_1(lateral + upsampled))
    torch.testing.assert_close(mask_features, expected)
