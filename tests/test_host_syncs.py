"""Host synchronisations (issue 9): the recorder finds them, the network's forward makes none and
post-processing at most the stated few; tools/count_host_syncs.py reports them by stage.

On the CPU nothing waits; the recorder counts what the same code would do on a GPU. The CUDA
case checks the forward with PyTorch's own sync detector on a GPU machine."""

import os
from collections import Counter

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from helpers import ROOT, TINY_CONFIG, load_script, on_cuda, shrunk_config

from mask2former.config import load_config
from mask2former.modeling.autocast_weights import autocast_weights
from mask2former.modeling.pixel_decoder.ops import functional
from mask2former.modeling.postprocessing import (
    instance_inference,
    instance_queries,
    instance_query_mask,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
)
from mask2former.utils.host_syncs import HostSyncRecorder, on_host, to_device

THINGS = {0, 1, 2}


def _record(function, *args, device="cpu", **kwargs):
    with HostSyncRecorder(device) as recorder:
        result = function(*args, **kwargs)
    return recorder, result


def test_recorder_finds_each_kind_with_its_line():
    values = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    tensor_factory = torch.tensor
    first_line = test_recorder_finds_each_kind_with_its_line.__code__.co_firstlineno
    with HostSyncRecorder("cpu") as recorder:
        with recorder.stage("reads"):
            values.sum().item()
            bool(values.any())
            values.tolist()
            values.cpu()
        with recorder.stage("shapes"):
            values[values > 0]
            values.nonzero()
            torch.unique(values)
            values.flatten().long().abs().bincount()
            values.repeat_interleave(torch.tensor([1, 2]), dim=0)
        torch.tensor([1, 2], device="cpu")
        with on_host():
            values.tolist()  # marked as host work: not recorded on the CPU
        values.repeat_interleave(2, dim=0)  # output size known: no sync
        torch.where(values > 0, values, 0.0)
    operations = [(sync.stage, sync.operation) for sync in recorder.counts()]
    assert operations == [
        ("reads", "Tensor.item"),
        ("reads", "Tensor.__bool__"),
        ("reads", "Tensor.tolist"),
        ("reads", "Tensor.cpu"),
        ("shapes", "aten.index (boolean mask)"),
        ("shapes", "aten.nonzero"),
        ("shapes", "aten._unique2"),
        ("shapes", "aten.bincount"),
        ("shapes", "aten.repeat_interleave (no output_size)"),
        ("other", "torch.tensor (host data to the device)"),
    ]
    lines = [int(sync.location.split(":")[1].split()[0]) for sync in recorder.counts()]
    assert lines == sorted(lines) and lines[0] == first_line + 6
    assert recorder.count() == 10 and recorder.count("reads") == 4
    # the wrappers are gone afterwards
    assert "tolist" not in torch.Tensor.__dict__ and torch.tensor is tensor_factory


def test_recorder_ignores_tensors_on_another_device():
    values = torch.ones(3)
    recorder, _ = _record(lambda: (values.tolist(), values.sum().item()), device="cuda")
    assert recorder.events == []


def test_recorder_counts_the_operations_that_launch_device_work():
    """Views, reshapes and bare allocations launch nothing; arithmetic, copies and reductions
    each count once, in the stage they ran in; host work marked with on_host and tensors on
    another device are not counted."""
    values = torch.arange(6.0)
    with HostSyncRecorder("cpu") as recorder:
        with recorder.stage("views"):
            grid = values.view(2, 3).t().unsqueeze(0).expand(4, 3, 2)
            grid[0].t().flatten()  # contiguous again: a view
            torch.empty(5)
        with recorder.stage("arithmetic"):
            grid = grid + 1  # 1
            grid.sum(dim=0).clone()  # 2
            grid.contiguous()  # 1: the copy of a non-contiguous tensor
            torch.zeros(3)  # 1: fills memory
        with on_host():
            values * 2
    assert recorder.operations == {"arithmetic": 5}
    assert recorder.operation_kinds == {
        ("arithmetic", "aten.add"): 1,
        ("arithmetic", "aten.sum"): 1,
        ("arithmetic", "aten.clone"): 2,
        ("arithmetic", "aten.zeros"): 1,
    }
    assert recorder.operation_count() == 5 and recorder.operation_count("views") == 0
    with HostSyncRecorder("cuda") as recorder:
        values * 2
        torch.zeros(3)
    assert recorder.operation_count() == 0


def _network_inputs(cfg, size):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, *size), generator=torch.Generator().manual_seed(0))
    return model, model.preprocess_image([{"image": image.float()}]).tensor


@pytest.mark.parametrize(
    "config, size",
    [
        (TINY_CONFIG, (64, 96)),
        ("coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml", (96, 160)),
    ],
    ids=["shapes", "r50-coco-panoptic"],
)
def test_network_forward_makes_no_host_sync(config, size):
    cfg = load_config(config) if config == TINY_CONFIG else shrunk_config(config)
    model, images = _network_inputs(cfg, size)
    with torch.no_grad():
        recorder, outputs = _record(model.network, images)
    assert recorder.events == [], recorder.counts()
    assert outputs["pred_masks"].shape[-2:] == (size[0] // 4, size[1] // 4)


def test_network_forward_on_the_reference_op_makes_no_host_sync(monkeypatch):
    """Without the compiled op (or with the official-style benchmark variant), the PyTorch
    reference splits value by the level sizes: known on the host, not read back."""
    monkeypatch.setattr(functional, "implementation_for", lambda *_: functional.REFERENCE)
    model, images = _network_inputs(load_config(TINY_CONFIG), (64, 96))
    with torch.no_grad():
        expected = model.network(images)["pred_masks"]
        recorder, outputs = _record(model.network, images)
    assert recorder.events == [], recorder.counts()
    assert torch.equal(outputs["pred_masks"], expected)


def _realistic(num_queries=30, num_classes=6, size=(24, 32), seed=0):
    """Confident queries whose masks tile the image (so panoptic inference keeps segments),
    the others unconfident with random masks."""
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(num_queries, num_classes + 1, generator=generator)
    class_logits[:8, :num_classes] += 12 * torch.eye(num_classes)[torch.arange(8) % num_classes]
    mask_logits = torch.randn(num_queries, *size, generator=generator)
    columns = torch.arange(size[1]) * 8 // size[1]
    mask_logits[:8] = torch.where(columns == torch.arange(8)[:, None, None], 6.0, -6.0)
    return class_logits, mask_logits


# What each post-processing function reads back from the device, at most.
POSTPROCESSING_SYNCS = {
    "resize": 0,
    "semantic": 0,
    "instance query mask": 0,
    "panoptic": 2,  # the kept queries (their number), the segment table
    "instance": 1,  # the top pairs' queries and thing flags (the number kept, the dedupe)
    "instance queries": 1,  # the same read
}


def _postprocessing_calls(class_logits, mask_logits):
    probs = resize_mask_logits(mask_logits, (96, 128), (90, 120), (60, 80)).sigmoid()
    thresholds = {"object_mask_threshold": 0.8, "overlap_threshold": 0.8, "mask_threshold": 0.5}
    return {
        "resize": lambda: resize_mask_logits(mask_logits, (96, 128), (90, 120), (60, 80)),
        "semantic": lambda: semantic_inference(class_logits, probs),
        "instance query mask": lambda: instance_query_mask(class_logits, 12, THINGS),
        "panoptic": lambda: panoptic_inference(
            class_logits, probs, thing_classes=THINGS, **thresholds
        ),
        "instance": lambda: instance_inference(
            class_logits, probs, topk=12, mask_threshold=0.5, thing_classes=THINGS
        ),
        "instance queries": lambda: instance_queries(class_logits, 12, THINGS),
    }


@pytest.mark.parametrize("name", list(POSTPROCESSING_SYNCS))
def test_postprocessing_host_syncs_at_most_stated(name):
    class_logits, mask_logits = _realistic()
    call = _postprocessing_calls(class_logits, mask_logits)[name]
    call()  # the first call fills the resize cache; the count is that of every later call
    recorder, result = _record(call)
    assert recorder.count() <= POSTPROCESSING_SYNCS[name], recorder.counts()
    if name == "panoptic":
        assert len(result[1]) >= 4  # segments to report: the per-segment work is there


def test_instance_query_mask_marks_the_instance_queries():
    class_logits, _ = _realistic(seed=3)
    for things in (None, THINGS):
        queries = instance_queries(class_logits, 12, things)[2]
        expected = torch.zeros(len(class_logits), dtype=torch.bool)
        expected[queries] = True
        assert torch.equal(instance_query_mask(class_logits, 12, things), expected)


@pytest.mark.parametrize("semantic_on, expected", [(True, 3), (False, 4)])
def test_model_postprocessing_host_syncs(semantic_on, expected):
    """The model's post-processing of one image: panoptic 2, instance 1, and one more without
    semantic output, for the queries the other outputs need."""
    cfg = load_config(TINY_CONFIG, ["MODEL.MASK_FORMER.TEST.SEMANTIC_ON", str(semantic_on)])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    class_logits, mask_logits = _realistic(8, num_classes, (16, 24))
    model.object_mask_threshold = 0.8
    args = (class_logits, mask_logits, (64, 96), (60, 90), (30, 45))
    model.inference_single_image(*args)
    recorder, result = _record(model.inference_single_image, *args)
    assert recorder.count() == expected, recorder.counts()
    assert result["panoptic_seg"][1] and len(result["instances"])


def test_count_host_syncs_tool_reports_stages(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    tool = load_script("tools/count_host_syncs.py")
    path = tmp_path / "syncs.json"
    report = tool.main(
        ["--config-file", TINY_CONFIG, "--image-size", "64", "96", "--output-size", "48", "72"]
        + ["--json-out", str(path)]
    )
    assert report["stages"]["backbone"] == report["stages"]["pixel_decoder"] == 0
    assert report["stages"]["transformer_decoder"] == report["stages"]["network"] == 0
    assert 0 < report["stages"]["postprocessing_realistic"] <= 3
    assert (
        report["total"]
        == sum(report["stages"].values())
        == sum(sync["count"] for sync in report["syncs"])
    )
    assert all(sync["location"].startswith("mask2former/") for sync in report["syncs"])
    operations = report["operations"]
    assert set(operations) == {*tool.STAGES, "total"}
    assert operations["total"] == sum(operations[stage] for stage in tool.STAGES)
    # the convolutions, attention layers and post-processing each launch work
    computing = ("backbone", "pixel_decoder", "transformer_decoder", "postprocessing_realistic")
    assert all(operations[stage] > 10 for stage in computing), operations
    kinds = report["operation_kinds"]
    assert sum(kind["count"] for kind in kinds) == operations["total"]
    assert [kind["count"] for kind in kinds] == sorted((k["count"] for k in kinds), reverse=True)
    named = [{key: kind[key] for key in ("stage", "operation")} for kind in kinds]
    assert {"stage": "backbone", "operation": "aten.convolution"} in named
    if functional.kernel_available("cpu"):  # named with its own namespace
        op = {"stage": "pixel_decoder", "operation": "mask2former.ms_deform_attn_forward"}
        assert op in named
    output = capsys.readouterr().out
    assert path.exists() and "postprocessing_realistic" in output and "operations" in output


def test_count_host_syncs_tool_counts_a_prepared_model(monkeypatch):
    """--prepared: the weights' casts and the frozen batch norms are no longer counted."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    tool = load_script("tools/count_host_syncs.py")
    options = ["--config-file", TINY_CONFIG, "--image-size", "64", "96", "--top", "0"]
    options += ["--precision", "bf16"]
    counts = {}
    for prepared in (False, True):
        report = tool.main(options + ["--prepared"] * prepared + ["MODEL.RESNETS.NORM", "FrozenBN"])
        assert report["prepared"] is prepared
        kinds = Counter()
        for kind in report["operation_kinds"]:
            kinds[kind["operation"]] += kind["count"]
        counts[prepared] = kinds
    model = build_model(load_config(TINY_CONFIG, ["MODEL.RESNETS.NORM", "FrozenBN"]))
    weights = sum(1 for _ in autocast_weights(model))
    norms = sum(isinstance(module, FrozenBatchNorm2d) for module in model.modules())
    # each weight was cast at least once per forward (a packed attention projection by slices)
    assert counts[False]["aten._to_copy"] - counts[True]["aten._to_copy"] >= weights > 0
    assert counts[False]["aten.native_batch_norm"] - counts[True]["aten.native_batch_norm"] == (
        norms
    )
    assert norms > 0


@pytest.mark.parametrize("device", [on_cuda("cuda")])
def test_network_forward_does_not_synchronise_on_cuda(device):
    model, images = _network_inputs(load_config(TINY_CONFIG, ["MODEL.DEVICE", device]), (64, 96))
    with torch.no_grad():
        model.network(images)  # warm-up: one-time set-up may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model.network(images)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", ["cpu", on_cuda("cuda")])
def test_to_device_copies_host_tensors_and_keeps_device_ones(device):
    image = torch.arange(24, dtype=torch.uint8).view(2, 3, 4)
    copied = to_device(image, torch.device(device))
    assert copied.device.type == device and copied.dtype == torch.uint8
    assert torch.equal(copied.cpu(), image)
    # a tensor already there is returned as it is (pinning a device tensor would fail)
    assert to_device(copied, device) is copied
    # another device type goes through Tensor.to
    on_meta = to_device(image, torch.device("meta"))
    assert on_meta.device.type == "meta" and on_meta.shape == image.shape


def test_training_forward_reads_back_only_the_matching_costs(monkeypatch):
    """A training step waits for the device once per matched decoder layer (the Hungarian
    assignment runs on the host), not for the mask count, the targets or the matches."""
    from test_meta_arch import _cfg, _training_inputs

    from mask2former.modeling.matcher import HungarianMatcher

    model = build_model(_cfg("MaskFormerHead"))
    model.train()
    calls = []
    original = HungarianMatcher.forward
    monkeypatch.setattr(
        HungarianMatcher, "forward", lambda *args: calls.append(1) or original(*args)
    )
    with HostSyncRecorder("cpu") as recorder:
        losses = model(_training_inputs())
    assert calls and all(torch.isfinite(loss) for loss in losses.values())
    # On the CPU, .to(device) of a tensor already on the device is listed too (a no-op on a
    # GPU); everything else in the loss code is a real wait.
    waits = {
        sync: count
        for sync, count in recorder.counts().items()
        if ("criterion.py" in sync.location or "matcher.py" in sync.location)
        and sync.operation != "Tensor.to (cpu)"
    }
    assert [(sync.operation, count) for sync, count in waits.items()] == [
        ("Tensor.cpu", len(calls))
    ]
    targets = [sync for sync in recorder.counts() if "prepare_targets" in sync.location]
    assert targets == []
