"""FLOP and parameter counts: mask2former.utils.analysis and tools/analyze_model.py."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from helpers import ROOT, TINY_CONFIG, load_script
from torch import nn

from mask2former.config import load_config
from mask2former.modeling.pixel_decoder.ops import kernel_available, ms_deform_attn
from mask2former.utils.analysis import flop_count_analysis

analyze_model = load_script("tools/analyze_model.py")
COCO_PANOPTIC = os.path.join(ROOT, "configs", "coco", "panoptic-segmentation")
# the operators fvcore has no formula for and mask2former.utils.analysis counts
ATTENTION_OPERATORS = {"aten::scaled_dot_product_attention", "mask2former::ms_deform_attn_forward"}


class FusedAttention(nn.Module):
    def forward(self, query, key, value, mask):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


class ExplicitAttention(nn.Module):
    """The same attention as two matrix products around a softmax (what the official
    release's nn.MultiheadAttention runs, and fvcore counts)."""

    def forward(self, query, key, value, mask):
        scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
        return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ value


def test_fused_attention_counts_as_the_explicit_products():
    """L = 7 queries of E = 8, S = 11 keys, values of Ev = 6, batch (2, 3), a boolean mask:
    the fused operator's count is fvcore's count of the two matrix products."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 3, 7, 8, generator=generator)
    key = torch.randn(2, 3, 11, 8, generator=generator)
    value = torch.randn(2, 3, 11, 6, generator=generator)
    mask = torch.rand(2, 3, 7, 11, generator=generator) > 0.3
    mask[..., 0] = True  # every query sees a key
    inputs = (query, key, value, mask)
    fused = flop_count_analysis(FusedAttention(), inputs)
    explicit = flop_count_analysis(ExplicitAttention(), inputs)
    assert fused.by_operator()["scaled_dot_product_attention"] > 0
    assert fused.total() == explicit.total() == 2 * 3 * 7 * 11 * 8 + 2 * 3 * 7 * 11 * 6
    assert not fused.unsupported_ops()


class DeformableAttention(nn.Module):
    def forward(self, value, shapes, starts, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights)


@pytest.mark.skipif(not kernel_available("cpu"), reason="the op is traced as the compiled kernel")
def test_deformable_attention_counts_five_multiply_adds_per_sample_and_channel():
    batch, values, heads, channels, queries, levels, points = 2, 20, 4, 8, 5, 2, 3
    shapes = torch.tensor([[4, 4], [2, 2]])
    starts = torch.tensor([0, 16])
    inputs = (
        torch.randn(batch, values, heads, channels),
        shapes,
        starts,
        torch.rand(batch, queries, heads, levels, points, 2),
        torch.rand(batch, queries, heads, levels, points),
    )
    analysis = flop_count_analysis(DeformableAttention(), inputs)
    samples = batch * queries * heads * levels * points
    assert analysis.by_operator()["ms_deform_attn_forward"] == 5 * samples * channels
    # (the input checks' reads of the level sizes are traced too, and not counted)
    assert "mask2former::ms_deform_attn_forward" not in analysis.unsupported_ops()


@pytest.mark.parametrize(
    "config, millions",
    [
        # Mask2Former paper, Table 1 (COCO panoptic)
        ("maskformer2_R50_bs16_50ep.yaml", 44),
        ("maskformer2_R101_bs16_50ep.yaml", 63),
        ("swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml", 216),
    ],
)
def test_parameter_counts_are_the_papers(config, millions):
    cfg = load_config(os.path.join(COCO_PANOPTIC, config), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == millions


def _run(argv, capsys):
    status = analyze_model.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _report(out):
    """The JSON that ends the tool's output."""
    return json.loads(out[out.rindex("\n{\n") + 1 :])


@pytest.mark.slow
@pytest.mark.skipif(not kernel_available("cpu"), reason="the op is traced as the compiled kernel")
def test_r50_coco_panoptic_flops_near_the_papers(capsys):
    """226 GFLOPs in the paper (Table 1), averaged over 100 COCO val images at short side 800;
    one typical 800 x 1067 image here, within 5%."""
    config = os.path.join(COCO_PANOPTIC, "maskformer2_R50_bs16_50ep.yaml")
    argv = ["--config-file", config, "--tasks", "flop", "--input-size", "800", "1067", "-n", "1"]
    status, out, err = _run([*argv, "--opts", "MODEL.DEVICE", "cpu"], capsys)
    assert status == 0, err
    flop = _report(out)["flop"]
    assert abs(flop["mean"] / 226 - 1) < 0.05, flop["mean"]
    assert not ATTENTION_OPERATORS & set(flop["not_counted_per_input"])


@pytest.mark.skipif(not kernel_available("cpu"), reason="the op is traced as the compiled kernel")
def test_tool_counts_on_random_images_and_on_the_data_set(weights, capsys, caplog):
    tasks = ["--tasks", "flop", "parameter", "activation", "structure"]
    argv = ["--config-file", TINY_CONFIG, *tasks, "--input-size", "64", "96", "-n", "2"]
    status, out, err = _run([*argv, "--weights", weights], capsys)
    assert status == 0, err
    report = _report(out)
    assert report["weights"] == weights
    model = build_model(load_config(TINY_CONFIG))
    assert report["parameter"]["millions"] == sum(p.numel() for p in model.parameters()) / 1e6
    attention = {"scaled_dot_product_attention", "ms_deform_attn_forward"}
    for task in ("flop", "activation"):
        counts = report[task]
        assert counts["images"] == 2
        # two random images of one size take the same operators
        assert counts["min"] == counts["max"] > 0
        assert attention | {"conv", "linear"} <= set(counts["by_operator"]), task
        assert not ATTENTION_OPERATORS & set(counts["not_counted_per_input"])
    assert "Structure:\nMaskFormer(" in out
    # listed in the report instead of a warning per input
    assert not [r for r in caplog.records if "Unsupported operator" in r.getMessage()]
    # the shapes validation set (generated on first use), through its test mapper
    status, out, err = _run(["--config-file", TINY_CONFIG, "--tasks", "flop", "-n", "2"], capsys)
    assert status == 0, err
    assert _report(out)["flop"]["images"] == 2


def test_tool_names_what_is_missing(tmp_path, capsys):
    missing = str(tmp_path / "model_final.pth")
    status, _, err = _run(["--config-file", TINY_CONFIG, "--weights", missing], capsys)
    assert status == 1 and missing in err and "--weights" in err
    ade20k = ["--opts", "DATASETS.TEST", '("ade20k_panoptic_val",)']
    status, _, err = _run(["--config-file", TINY_CONFIG, "--tasks", "flop", *ade20k], capsys)
    assert status == 1
    assert "ade20k_panoptic_val" in err and "--input-size H W" in err
