"""Tests of the backbones: D2SwinTransformer and detectron2's ResNets under our config."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from torch import nn
from torch.nn import functional as F

import mask2former.modeling  # noqa: F401  (fills the registries)
from mask2former.config import add_maskformer2_config
from mask2former.modeling.backbone.swin import (
    D2SwinTransformer,
    DropPath,
    PatchMerging,
    SwinTransformerBlock,
    WindowAttention,
    window_layout,
)


def tiny_swin_cfg(**overrides):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
    cfg.MODEL.SWIN.EMBED_DIM = 24
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 3, 6]
    for key, value in overrides.items():
        setattr(cfg.MODEL.SWIN, key, value)
    return cfg


@pytest.mark.parametrize(
    "window_size, height, width", [(7, 70, 90), (7, 64, 64), (12, 45, 101), (4, 33, 17)]
)
def test_swin_output_shapes_on_any_input_size(window_size, height, width):
    torch.manual_seed(0)
    backbone = build_backbone(tiny_swin_cfg(WINDOW_SIZE=window_size)).eval()
    with torch.no_grad():
        outputs = backbone(torch.rand(2, 3, height, width))
    assert list(outputs) == ["res2", "res3", "res4", "res5"]
    expected_height, expected_width = math.ceil(height / 4), math.ceil(width / 4)
    for level, name in enumerate(["res2", "res3", "res4", "res5"]):
        assert outputs[name].shape == (2, 24 * 2**level, expected_height, expected_width)
        assert outputs[name].dtype == torch.float32
        assert torch.isfinite(outputs[name]).all()
        expected_height, expected_width = (
            math.ceil(expected_height / 2),
            math.ceil(expected_width / 2),
        )


def test_swin_output_shape_and_divisibility():
    backbone = build_backbone(tiny_swin_cfg(OUT_FEATURES=["res3", "res5"]))
    assert backbone.output_shape() == {
        "res3": ShapeSpec(channels=48, stride=8),
        "res5": ShapeSpec(channels=192, stride=32),
    }
    assert backbone.size_divisibility == 32
    with torch.no_grad():
        assert set(backbone(torch.rand(1, 3, 64, 64))) == {"res3", "res5"}
    # one output LayerNorm per returned level, named after the stage index
    names = {name for name, _ in backbone.named_children() if name.startswith("norm")}
    assert names == {"norm1", "norm3"}


def test_swin_rejects_bad_settings():
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_backbone(tiny_swin_cfg(OUT_FEATURES=["res6"]))
    with pytest.raises(ValueError, match="NUM_HEADS"):
        build_backbone(tiny_swin_cfg(NUM_HEADS=[1, 2, 3]))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        build_backbone(tiny_swin_cfg())(torch.rand(3, 32, 32))


def official_swin_layout(embed_dim, depths, num_heads, window_size, ape_grid=None):
    """Parameter/buffer names and shapes of the official Swin checkpoints (as in Mask2Former's
    model zoo, under the "backbone." prefix), from the architecture definition."""
    layout = {
        "patch_embed.proj.weight": (embed_dim, 3, 4, 4),
        "patch_embed.proj.bias": (embed_dim,),
        "patch_embed.norm.weight": (embed_dim,),
        "patch_embed.norm.bias": (embed_dim,),
    }
    if ape_grid is not None:
        layout["absolute_pos_embed"] = (1, embed_dim, ape_grid, ape_grid)
    tokens = window_size * window_size
    for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim = embed_dim * 2**stage
        for block in range(depth):
            prefix = f"layers.{stage}.blocks.{block}."
            layout.update(
                {
                    prefix + "norm1.weight": (dim,),
                    prefix + "norm1.bias": (dim,),
                    prefix + "attn.relative_position_bias_table": (
                        (2 * window_size - 1) ** 2,
                        heads,
                    ),
                    prefix + "attn.relative_position_index": (tokens, tokens),
                    prefix + "attn.qkv.weight": (3 * dim, dim),
                    prefix + "attn.qkv.bias": (3 * dim,),
                    prefix + "attn.proj.weight": (dim, dim),
                    prefix + "attn.proj.bias": (dim,),
                    prefix + "norm2.weight": (dim,),
                    prefix + "norm2.bias": (dim,),
                    prefix + "mlp.fc1.weight": (4 * dim, dim),
                    prefix + "mlp.fc1.bias": (4 * dim,),
                    prefix + "mlp.fc2.weight": (dim, 4 * dim),
                    prefix + "mlp.fc2.bias": (dim,),
                }
            )
        if stage < len(depths) - 1:
            layout[f"layers.{stage}.downsample.reduction.weight"] = (2 * dim, 4 * dim)
            layout[f"layers.{stage}.downsample.norm.weight"] = (4 * dim,)
            layout[f"layers.{stage}.downsample.norm.bias"] = (4 * dim,)
        layout[f"norm{stage}.weight"] = (dim,)
        layout[f"norm{stage}.bias"] = (dim,)
    return layout


@pytest.mark.parametrize(
    "variant, overrides, ape_grid",
    [
        ("Swin-T 224", {}, None),
        ("Swin-T 224 + APE", {"APE": True}, 56),
        (
            "Swin-L 384",
            {
                "EMBED_DIM": 192,
                "DEPTHS": [2, 2, 18, 2],
                "NUM_HEADS": [6, 12, 24, 48],
                "WINDOW_SIZE": 12,
                "PRETRAIN_IMG_SIZE": 384,
            },
            None,
        ),
    ],
)
def test_swin_state_dict_matches_official_layout(variant, overrides, ape_grid):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    for key, value in overrides.items():
        setattr(cfg.MODEL.SWIN, key, value)
    with torch.device("meta"):  # shapes only, no memory or init time
        backbone = D2SwinTransformer(cfg, ShapeSpec(channels=3))
    actual = {name: tuple(value.shape) for name, value in backbone.state_dict().items()}
    swin = cfg.MODEL.SWIN
    expected = official_swin_layout(
        swin.EMBED_DIM, swin.DEPTHS, swin.NUM_HEADS, swin.WINDOW_SIZE, ape_grid
    )
    assert sorted(actual) == sorted(expected), variant
    assert actual == expected, variant
    index = backbone.state_dict()["layers.0.blocks.0.attn.relative_position_index"]
    assert index.dtype == torch.int64


def test_swin_t_parameter_count():
    # Swin-T has 28.3M parameters including its 1000-class head (768 * 1000 + 1000) and final
    # norm (2 * 768); the four output norms here add 2 * (96 + 192 + 384 + 768).
    with torch.device("meta"):
        backbone = D2SwinTransformer()
    count = sum(parameter.numel() for parameter in backbone.parameters())
    expected = 28_288_354 - (768 * 1000 + 1000) - 2 * 768 + 2 * (96 + 192 + 384 + 768)
    assert count == expected


def test_relative_position_index_pairs_offsets():
    window = 3
    attention = WindowAttention(8, window, 2, True, None, 0.0, 0.0)
    index = attention.relative_position_index
    rows, cols = torch.div(torch.arange(9), window, rounding_mode="floor"), torch.arange(9) % 3
    for query in range(9):
        for key in range(9):
            d_row = rows[query] - rows[key] + window - 1
            d_col = cols[query] - cols[key] + window - 1
            assert index[query, key] == d_row * (2 * window - 1) + d_col


def reference_windows(x, window_size, shift_size):
    """(B, H, W, C) -> (B * G, N, C) from Swin's definition: zero-pad the bottom and right to
    multiples of the window, roll by -shift, cut windows (row-major), one slice at a time."""
    batch, height, width, channels = x.shape
    m = window_size
    padded = x.new_zeros(batch, math.ceil(height / m) * m, math.ceil(width / m) * m, channels)
    padded[:, :height, :width] = x
    rolled = padded.roll((-shift_size, -shift_size), dims=(1, 2))
    return torch.stack(
        [
            rolled[b, top : top + m, left : left + m].reshape(m * m, channels)
            for b in range(batch)
            for top in range(0, padded.shape[1], m)
            for left in range(0, padded.shape[2], m)
        ]
    )


def cut_windows(x, layout, window_size):
    batch, height, width, channels = x.shape
    tokens = F.pad(x.reshape(batch, height * width, channels), (0, 0, 0, 1)).flatten(0, 1)
    return tokens[layout.partition].view(-1, window_size**2, channels)


def put_back(windows, layout, shape):
    return windows.flatten(0, 1)[layout.reverse].view(shape)


@pytest.mark.parametrize("height, width", [(8, 12), (5, 5), (7, 10), (1, 9)])
@pytest.mark.parametrize("shift_size", [0, 1, 2])
def test_window_layout_cuts_and_puts_back_as_swin_defines(height, width, shift_size):
    x = torch.randn(2, height, width, 3)
    layout = window_layout(2, height, width, 4, shift_size, torch.device("cpu"))
    windows = cut_windows(x, layout, 4)
    expected = reference_windows(x, 4, shift_size)
    assert layout.num_windows == expected.shape[0] // 2
    assert torch.equal(windows, expected)
    assert torch.equal(put_back(windows, layout, x.shape), x)
    assert (layout.mask is None) == (shift_size == 0)


def test_window_layout_order():
    x = torch.arange(2 * 8 * 12 * 3, dtype=torch.float32).view(2, 8, 12, 3)
    windows = cut_windows(x, window_layout(2, 8, 12, 4, 0, torch.device("cpu")), 4)
    assert windows.shape == (2 * 2 * 3, 16, 3)
    # second window of the first image: rows 0-3, columns 4-7, row-major inside the window
    assert torch.equal(windows[1], x[0, 0:4, 4:8].reshape(16, 3))
    # fourth window: second row of windows, first column; seventh: the second image's first
    assert torch.equal(windows[3], x[0, 4:8, 0:4].reshape(16, 3))
    assert torch.equal(windows[6], x[1, 0:4, 0:4].reshape(16, 3))


def test_shift_mask_regions_by_hand():
    # 8x8 map, window 4, shift 2: after rolling, the last window row/column mixes two regions
    mask = window_layout(2, 8, 8, 4, 2, torch.device("cpu")).mask
    assert mask.shape == (2 * 4, 16, 16)
    assert torch.equal(mask[:4], mask[4:])  # the same for every image
    assert not mask[0].any()
    # window 1 (top-right): columns 4-5 vs 6-7 are different regions
    col = torch.arange(16) % 4
    expected = (col[:, None] < 2) != (col[None, :] < 2)
    assert torch.equal(mask[1], expected)
    # window 3 (bottom-right): four regions, split by row and by column
    row = torch.div(torch.arange(16), 4, rounding_mode="floor")
    region = (row < 2).long() * 2 + (col < 2).long()
    assert torch.equal(mask[3], region[:, None] != region[None, :])


def naive_window_attention(attention, x, mask):
    """softmax(q k^T * scale + relative bias, masked) v, written out from the definition."""
    num_windows_total, tokens, channels = x.shape
    heads = attention.num_heads
    q, k, v = attention.qkv(x).view(num_windows_total, tokens, 3, heads, -1).unbind(2)
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * attention.scale
    bias = attention.relative_position_bias_table[attention.relative_position_index]
    logits = logits + bias.permute(2, 0, 1)
    if mask is not None:
        logits = logits.masked_fill(mask[:, None], -100.0)
    out = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v).reshape_as(x)
    return attention.proj(out)


def test_window_attention_matches_definition():
    torch.manual_seed(0)
    attention = WindowAttention(12, 4, 3, True, None, 0.0, 0.0).eval()
    nn.init.normal_(attention.relative_position_bias_table)
    x = torch.randn(2 * 4, 16, 12)
    mask = window_layout(2, 8, 8, 4, 2, torch.device("cpu")).mask
    with torch.no_grad():
        for window_mask in (None, mask):
            expected = naive_window_attention(attention, x, window_mask)
            assert torch.allclose(attention(x, window_mask), expected, atol=1e-5)


def _dependence(block, height, width, layout, source, target):
    """Gradient magnitude of the block output at `target` w.r.t. its input at `source`."""
    x = torch.randn(1, height, width, 8, requires_grad=True)
    out = block(x, layout)[0]
    out[target].sum().backward()
    return x.grad[0][source].abs().sum().item()


def test_shifted_windows_do_not_attend_across_regions():
    torch.manual_seed(0)
    height = width = 8
    block = SwinTransformerBlock(8, 2, 4, 2, 2.0, True, None, 0.0, 0.0, 0.0).eval()
    layout = window_layout(1, height, width, 4, 2, torch.device("cpu"))
    # (0, 0) and (7, 7) share a window after the cyclic shift but come from opposite corners
    assert _dependence(block, height, width, layout, source=(7, 7), target=(0, 0)) == 0.0
    # same region, same shifted window: attention flows
    assert _dependence(block, height, width, layout, source=(1, 1), target=(0, 0)) > 0.0
    # (2, 2) shares (0, 0)'s regular window but not its shifted one
    assert _dependence(block, height, width, layout, source=(2, 2), target=(0, 0)) == 0.0
    # without the mask the corners would see each other
    unmasked = layout._replace(mask=torch.zeros_like(layout.mask))
    assert _dependence(block, height, width, unmasked, source=(7, 7), target=(0, 0)) > 0.0


def test_regular_windows_are_independent():
    torch.manual_seed(0)
    block = SwinTransformerBlock(8, 2, 4, 0, 2.0, True, None, 0.0, 0.0, 0.0).eval()
    layout = window_layout(1, 8, 8, 4, 0, torch.device("cpu"))
    assert _dependence(block, 8, 8, layout, source=(3, 4), target=(3, 3)) == 0.0
    assert _dependence(block, 8, 8, layout, source=(0, 0), target=(3, 3)) > 0.0


def test_windows_away_from_the_padding_are_unchanged():
    # a 5x5 map with window 4 is padded to 8x8; cropping the valid area from a larger input
    # must not matter for regular windows fully inside it
    torch.manual_seed(0)
    block = SwinTransformerBlock(8, 2, 4, 0, 2.0, True, None, 0.0, 0.0, 0.0).eval()
    x = torch.randn(1, 8, 8, 8)
    cpu = torch.device("cpu")
    with torch.no_grad():
        full = block(x, window_layout(1, 8, 8, 4, 0, cpu))[0]
        cropped = block(x[:, :5, :5], window_layout(1, 5, 5, 4, 0, cpu))[0]
    assert torch.allclose(full[:4, :4], cropped[:4, :4], atol=1e-6)


def test_patch_merging_neighbourhood_order():
    merge = PatchMerging(2)
    merge.norm, merge.reduction = nn.Identity(), nn.Identity()
    x = torch.arange(4 * 4 * 2, dtype=torch.float32).view(1, 4, 4, 2)
    out = merge(x)
    assert out.shape == (1, 2, 2, 8)
    # official order: (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1)
    expected = torch.cat([x[0, 0, 0], x[0, 1, 0], x[0, 0, 1], x[0, 1, 1]])
    assert torch.equal(out[0, 0, 0], expected)
    assert merge(torch.zeros(1, 5, 3, 2)).shape == (1, 3, 2, 8)


def test_swin_exports_with_dynamic_batch_and_size():
    # one program for every batch and size (multiples of 32): with and without padding to whole
    # windows (224 = 32 * 7), one window or several in the last stages, batch 1 or more
    torch.manual_seed(0)
    backbone = build_backbone(tiny_swin_cfg()).eval()
    blocks = torch.export.Dim("height_blocks", min=2), torch.export.Dim("width_blocks", min=2)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1), 2: 32 * blocks[0], 3: 32 * blocks[1]}}
    with torch.no_grad():
        program = torch.export.export(backbone, (torch.rand(2, 3, 64, 96),), dynamic_shapes=dynamic)
        for batch, height, width in [(1, 64, 96), (3, 96, 64), (1, 224, 448), (2, 288, 224)]:
            x = torch.rand(batch, 3, height, width)
            expected, actual = backbone(x), program.module()(x)
            for name in expected:
                assert torch.equal(actual[name], expected[name]), (batch, height, width, name)


def test_drop_path():
    torch.manual_seed(0)
    layer = DropPath(0.5)
    x = torch.ones(1000, 3)
    assert torch.equal(layer.eval()(x), x)
    dropped = layer.train()(x)
    kept = dropped[:, 0] != 0
    assert torch.equal(dropped[kept], torch.full_like(dropped[kept], 2.0))
    assert (dropped[~kept] == 0).all()
    assert 400 < kept.sum() < 600


def test_swin_train_step_and_checkpointing_give_same_gradients():
    torch.manual_seed(0)
    plain = build_backbone(tiny_swin_cfg(DROP_PATH_RATE=0.0))
    checkpointed = build_backbone(tiny_swin_cfg(DROP_PATH_RATE=0.0, USE_CHECKPOINT=True))
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 40, 56)
    for model in (plain, checkpointed):
        model.train()
        sum(feature.mean() for feature in model(x).values()).backward()
    for (name, p1), (_, p2) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert p1.grad is not None, name
        assert torch.allclose(p1.grad, p2.grad, atol=1e-6), name


def resnet_cfg(name="build_resnet_backbone", depth=50):
    """Backbone keys as the official Mask2Former ResNet configs write them."""
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 1, 1]
    return cfg


def test_resnet50_from_official_style_config():
    torch.manual_seed(0)
    backbone = build_backbone(resnet_cfg()).eval()
    expected = {f"res{i + 2}": (256 * 2**i, 4 * 2**i) for i in range(4)}
    assert {k: (s.channels, s.stride) for k, s in backbone.output_shape().items()} == expected
    with torch.no_grad():
        outputs = backbone(torch.rand(1, 3, 64, 96))
    for name, (channels, stride) in expected.items():
        assert outputs[name].shape == (1, channels, 64 // stride, 96 // stride)


def test_deeplab_stem_variant_builds():
    assert "build_resnet_deeplab_backbone" in BACKBONE_REGISTRY
    cfg = resnet_cfg("build_resnet_deeplab_backbone")
    cfg.MODEL.RESNETS.STEM_TYPE = "deeplab"
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 2, 4]
    cfg.MODEL.RESNETS.RES5_DILATION = 2
    torch.manual_seed(0)
    backbone = build_backbone(cfg).eval()
    # DeepLab stem: three 3x3 convs instead of one 7x7
    assert [backbone.stem.conv1.kernel_size, backbone.stem.conv3.kernel_size] == [(3, 3)] * 2
    dilations = [block.conv2.dilation for block in backbone.res5]
    assert dilations == [(2, 2), (4, 4), (8, 8)]
    with torch.no_grad():
        outputs = backbone(torch.rand(1, 3, 64, 64))
    assert outputs["res5"].shape == (1, 2048, 4, 4)  # dilated res5 keeps stride 16


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
            ],
        ),
    ],
)
def test_swin_under_bfloat16_autocast_is_close_to_float32(device):
    torch.manual_seed(0)
    backbone = build_backbone(tiny_swin_cfg(WINDOW_SIZE=4)).to(device).eval()
    images = torch.rand(1, 3, 60, 44, device=device)
    with torch.no_grad():
        reference = backbone(images)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            reduced = backbone(images)
    for name, feature in reference.items():
        assert torch.isfinite(reduced[name]).all(), name
        error = (reduced[name].float() - feature).abs().mean() / feature.abs().mean()
        assert error < 0.05, (name, error.item())


@pytest.mark.parametrize("frozen_stages", [-1, 0, 2, 4])
def test_swin_frozen_stages(frozen_stages):
    torch.manual_seed(0)
    cfg = tiny_swin_cfg(FROZEN_STAGES=frozen_stages, APE=True, DROP_PATH_RATE=0.5)
    backbone = build_backbone(cfg)
    backbone.train()
    # the parameters frozen: by name, the reference code's module names
    frozen_prefixes = [] if frozen_stages < 0 else ["patch_embed.", "absolute_pos_embed"]
    for stage in range(max(frozen_stages, 0)):
        frozen_prefixes += [f"layers.{stage}.", f"norm{stage}."]
    for name, parameter in backbone.named_parameters():
        frozen = any(name.startswith(prefix) for prefix in frozen_prefixes)
        assert parameter.requires_grad != frozen, name
    # frozen stages stay in eval mode (no drop path), the others train
    for stage, layer in enumerate(backbone.layers):
        assert layer.training == (stage >= frozen_stages), stage
    if frozen_stages == len(backbone.layers):  # all of it: nothing left to train
        assert not any(p.requires_grad for p in backbone.parameters())
        return
    outputs = backbone(torch.rand(2, 3, 64, 64))
    sum(feature.mean() for feature in outputs.values()).backward()
    for name, parameter in backbone.named_parameters():
        assert (parameter.grad is None) == (not parameter.requires_grad), name
    # the optimizer leaves the frozen parameters out
    from mask2former.engine import build_optimizer

    optimizer = build_optimizer(cfg, backbone)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in backbone.parameters() if p.requires_grad}


def test_swin_frozen_stages_out_of_range_is_named():
    with pytest.raises(ValueError, match="MODEL.SWIN.FROZEN_STAGES is 5"):
        build_backbone(tiny_swin_cfg(FROZEN_STAGES=5))
