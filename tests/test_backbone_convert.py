"""Tests of the backbone weight converters (tools/convert-*.py and their library functions)."""

import pickle

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone
from helpers import load_script
from torch import nn

from mask2former.config import add_maskformer2_config
from mask2former.modeling.backbone.convert import (
    convert_checkpoint_file,
    convert_swin_state_dict,
    convert_torchvision_resnet_state_dict,
    extract_state_dict,
)
from mask2former.modeling.backbone.swin import D2SwinTransformer


def run_script(name, *args):
    """Run tools/<name>'s main() in this process (faster than a subprocess) -> exit code."""
    return load_script(f"tools/{name}").main([str(arg) for arg in args])


def random_torchvision_resnet(depth):
    torch.manual_seed(depth)
    model = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
    for module in model.modules():  # non-trivial BatchNorm statistics and affine parameters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return model.eval()


def torchvision_res5(model, images):
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def detectron2_resnet(depth, norm):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    if depth < 50:
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    return build_backbone(cfg).eval()


def test_resnet_key_mapping_by_hand():
    state = {
        "conv1.weight": torch.zeros(1),
        "bn1.running_var": torch.zeros(1),
        "bn1.num_batches_tracked": torch.zeros(()),
        "layer1.0.conv2.weight": torch.zeros(1),
        "layer1.0.bn3.bias": torch.zeros(1),
        "layer4.2.bn1.weight": torch.zeros(1),
        "layer2.0.downsample.0.weight": torch.zeros(1),
        "layer2.0.downsample.1.running_mean": torch.zeros(1),
        "fc.weight": torch.zeros(1),
        "fc.bias": torch.zeros(1),
    }
    assert sorted(convert_torchvision_resnet_state_dict(state)) == sorted(
        [
            "stem.conv1.weight",
            "stem.conv1.norm.running_var",
            "res2.0.conv2.weight",
            "res2.0.conv3.norm.bias",
            "res5.2.conv1.norm.weight",
            "res3.0.shortcut.weight",
            "res3.0.shortcut.norm.running_mean",
        ]
    )
    with pytest.raises(ValueError, match="avgpool.weight"):
        convert_torchvision_resnet_state_dict({"avgpool.weight": torch.zeros(1)})


@pytest.mark.parametrize("depth, norm", [(18, "FrozenBN"), (50, "FrozenBN"), (18, "BN")])
def test_converted_resnet_loads_strictly_and_matches_torchvision(depth, norm):
    reference = random_torchvision_resnet(depth)
    converted = convert_torchvision_resnet_state_dict(reference.state_dict())
    backbone = detectron2_resnet(depth, norm)
    weights = {k: torch.from_numpy(v) for k, v in converted.items()}
    result = backbone.load_state_dict(weights, strict=False)
    assert result.unexpected_keys == []
    if norm == "FrozenBN":  # the official configs' default
        assert result.missing_keys == []
    else:  # trainable BN only misses its step counters, which pretrained weights do not carry
        assert result.missing_keys
        assert all(key.endswith(".num_batches_tracked") for key in result.missing_keys)
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = torchvision_res5(reference, images)
        actual = backbone(images)["res5"]
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_resnet_script_writes_checkpoint_detectron2_loads(tmp_path):
    reference = random_torchvision_resnet(18)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    exit_code = run_script(
        "convert-torchvision-to-d2.py", tmp_path / "r18.pth", tmp_path / "r18.pkl"
    )
    assert exit_code == 0
    with open(tmp_path / "r18.pkl", "rb") as file:
        checkpoint = pickle.load(file)
    assert checkpoint["__author__"] == "torchvision"
    assert checkpoint["matching_heuristics"] is True

    backbone = detectron2_resnet(18, "FrozenBN")
    DetectionCheckpointer(backbone).load(str(tmp_path / "r18.pkl"))
    with torch.no_grad():
        images = torch.rand(1, 3, 64, 64)
        assert torch.allclose(
            backbone(images)["res5"], torchvision_res5(reference, images), rtol=1e-4, atol=1e-4
        )


def test_scripts_report_bad_inputs(tmp_path, capsys):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    torch.save({"epoch": 3}, tmp_path / "no_weights.pth")
    cases = [
        ("missing.pth", "does not exist"),
        ("garbage.pth", "cannot be read as a PyTorch file"),
        ("no_weights.pth", "does not contain a state dict"),
    ]
    for script in ("convert-torchvision-to-d2.py", "convert-pretrained-swin-model-to-d2.py"):
        for name, message in cases:
            assert run_script(script, tmp_path / name, tmp_path / "out.pkl") == 1
            stderr = capsys.readouterr().err
            assert message in stderr and name in stderr
            assert not (tmp_path / "out.pkl").exists()


def tiny_swin():
    return D2SwinTransformer(
        embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4
    )


def fake_official_swin_checkpoint(model):
    """An ImageNet Swin checkpoint as released: backbone weights without the four output norms,
    plus the final norm, the classifier and the shifted blocks' attention masks."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("norm")}
    state["norm.weight"], state["norm.bias"] = torch.ones(128), torch.zeros(128)
    state["head.weight"], state["head.bias"] = torch.zeros(1000, 128), torch.zeros(1000)
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    return {"model": state}


def test_swin_conversion_keeps_backbone_names(tmp_path):
    torch.manual_seed(0)
    source = tiny_swin()
    torch.save(fake_official_swin_checkpoint(source), tmp_path / "swin.pth")
    count = convert_checkpoint_file(
        str(tmp_path / "swin.pth"),
        str(tmp_path / "swin.pkl"),
        convert_swin_state_dict,
        "third_party",
    )
    with open(tmp_path / "swin.pkl", "rb") as file:
        checkpoint = pickle.load(file)
    assert count == len(checkpoint["model"])
    assert checkpoint["__author__"] == "third_party" and checkpoint["matching_heuristics"]

    target = tiny_swin()
    result = target.load_state_dict(
        {k: torch.from_numpy(v) for k, v in checkpoint["model"].items()}, strict=False
    )
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(
        f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")
    )
    for name, value in source.state_dict().items():
        if not name.startswith("norm"):
            assert torch.equal(target.state_dict()[name], value), name


def test_swin_conversion_rejects_other_models():
    with pytest.raises(ValueError, match="patch_embed.proj.weight"):
        convert_swin_state_dict(random_torchvision_resnet(18).state_dict())


def test_extract_state_dict_variants():
    weights = {"a.weight": torch.zeros(1)}
    assert extract_state_dict(weights, "x") == weights
    assert extract_state_dict({"model": weights, "epoch": 1}, "x") == weights
    assert extract_state_dict({"state_dict": weights}, "x") == weights
    with pytest.raises(ValueError, match="file.pth"):
        extract_state_dict([1, 2], "file.pth")
