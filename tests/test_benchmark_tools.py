"""The benchmark tools on tiny models. tools/benchmark_inference.py: the device, precision and
batch-size options and the JSON report the GPU measurements of issue 9 rely on (its CUDA run is
marked cuda); the video inference, gradient accumulation, sliding-window and evaluation
benchmarks: their reports."""

import json
import math
import os

import pytest
import torch
from helpers import ROOT, TINY_CONFIG, load_script, on_cuda

benchmark_inference = load_script("tools/benchmark_inference.py")

# (device, precision): the CPU run proves the logic here, the CUDA one runs on a GPU machine
DEVICE_PRECISION = [
    ("cpu", "bf16"),
    on_cuda("cuda", "fp16"),
]
TINY_RUN = [
    "--config-file", TINY_CONFIG,
    "--image-size", "64", "96",
    "--output-size", "48", "72",
    "--repeats", "1",
    "--threads", "1",
]  # fmt: skip


def _positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.parametrize("device, precision", DEVICE_PRECISION)
def test_inference_benchmark_report(tmp_path, capsys, device, precision):
    path = tmp_path / "report.json"
    benchmark_inference.main(
        [*TINY_RUN, "--device", device, "--precision", precision, "--batch-size", "2"]
        + ["--variants", "ours", "official-style", "--json-out", str(path)]
    )
    report = json.loads(path.read_text())
    assert json.loads(capsys.readouterr().out.split("\n\n")[0]) == report
    assert report["device"] == device
    assert report["precision"] == precision
    assert report["batch_size"] == 2
    assert report["torch_version"] == torch.__version__
    assert ("gpu_name" in report) == (device == "cuda")
    assert sorted(report["variants"]) == ["official-style", "ours"]
    dtype = {"bf16": "bfloat16", "fp16": "float16"}[precision]
    for name, variant in report["variants"].items():
        # the forward saw both copies of the image, under autocast
        assert variant["network_output"] == {"batch_size": 2, "dtype": dtype}, name
        [run] = variant["forward_runs_s"]
        stages = ["backbone", "pixel_decoder", "transformer_decoder", "network"]
        assert all(_positive(run[stage]) for stage in [*stages, "postprocessing", "total"])
        # the stages run inside the network's forward, the network inside the total
        assert (
            run["backbone"] + run["pixel_decoder"] + run["transformer_decoder"] <= (run["network"])
        )
        assert run["network"] + run["postprocessing"] <= run["total"]
        assert all(_positive(variant["stages_median_s"][stage]) for stage in stages)
        postprocessing = variant["postprocessing_realistic"]["wall_s"]
        assert _positive(postprocessing)
        network = variant["stages_median_s"]["network"]
        assert variant["end_to_end_s"] == pytest.approx(network + 2 * postprocessing)
        assert variant["network_per_image_s"] == pytest.approx(network / 2)
        assert variant["end_to_end_per_image_s"] == pytest.approx(variant["end_to_end_s"] / 2)
        assert variant["images_per_s"] == pytest.approx(2 / variant["end_to_end_s"])
        assert ("forward_peak_memory_mib" in variant) == (device == "cuda")
    # ours and the straightforward post-processing agree on the device too
    differences = report["variants"]["ours"]["postprocessing_realistic"]
    differences = differences["differences_from_straightforward"]
    assert differences["sem_seg_max_abs"] < 1e-4
    assert differences["panoptic_pixels"] == differences["instance_mask_pixels"] == 0


def test_cuda_without_a_gpu_and_cpu_only_variants_are_refused(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        benchmark_inference.main([*TINY_RUN, "--device", "cuda"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda: CUDA is not available" in err and "--device cpu" in err
    assert "Traceback" not in err

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for variant, reason in [
        ("onnxruntime", "runs on the CPU"),
        ("ours-default-malloc", "CPU matter"),
        ("transformers", "runs on the CPU"),
    ]:
        with pytest.raises(SystemExit):
            benchmark_inference.main([*TINY_RUN, "--device", "cuda", "--variants", variant])
        err = capsys.readouterr().err
        assert f"cannot time {variant} with --device cuda: " in err and reason in err
    with pytest.raises(SystemExit):
        benchmark_inference.main([*TINY_RUN, "--precision", "fp16", "--variants", "onnxruntime"])
    assert "exported fp32 model" in capsys.readouterr().err
    for variant in ("ours-cuda-graphs", "ours-graphed"):
        with pytest.raises(SystemExit):
            benchmark_inference.main([*TINY_RUN, "--variants", variant])
        err = capsys.readouterr().err
        assert f"cannot time {variant} with --device cpu: CUDA graphs need a GPU" in err


@pytest.mark.parametrize("precision", [on_cuda("bf16"), on_cuda("fp32")])
def test_graphed_variant_times_the_replayed_network_on_cuda(tmp_path, precision):
    path = tmp_path / "report.json"
    benchmark_inference.main(
        [*TINY_RUN, "--device", "cuda", "--precision", precision, "--repeats", "3"]
        + ["--variants", "ours", "ours-graphed", "--json-out", str(path)]
    )
    variants = json.loads(path.read_text())["variants"]
    graphed = variants["ours-graphed"]
    assert graphed["cuda_graphs"] is True
    dtype = {"bf16": "bfloat16", "fp32": "float32"}[precision]
    assert graphed["network_output"] == {"batch_size": 1, "dtype": dtype}
    assert set(graphed["stages_median_s"]) == {"network"}  # replays run no module hooks
    assert _positive(graphed["stages_median_s"]["network"])
    assert set(variants["ours"]["stages_median_s"]) > {"network"}


def test_video_inference_benchmark_report(capsys):
    benchmark_video = load_script("tools/benchmark_video_inference.py")
    shapes = os.path.join(ROOT, "configs", "shapes")
    report = benchmark_video.main(
        ["--config-file", os.path.join(shapes, "video_maskformer2_R18.yaml")]
        + ["--frame-size", "48", "64", "--lengths", "3", "2", "--repeats", "1", "--threads", "1"]
        + ["--image-config", os.path.join(shapes, "maskformer2_R18_instance.yaml")]
    )
    rows = report["rows"]
    assert [(row["model"], row["frames"]) for row in rows] == [
        ("video", 2),
        ("video", 3),
        ("image, frame by frame", 3),
    ]
    for row in rows:
        assert row["seconds"] > 0 and row["peak_rss_mib"] > 0
        assert row["seconds_per_frame"] == pytest.approx(row["seconds"] / row["frames"], abs=1e-3)
    assert rows[0]["peak_rss_mib"] <= rows[1]["peak_rss_mib"] <= rows[2]["peak_rss_mib"]
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{") :]) == report


@pytest.mark.slow
def test_accumulation_benchmark_report(capsys):
    benchmark_accumulation = load_script("tools/benchmark_accumulation.py")
    report = benchmark_accumulation.main(
        ["--config-file", os.path.join(ROOT, "configs", "shapes", "maskformer2_R18_panoptic.yaml")]
        + ["--ims-per-batch", "2", "--image-size", "64", "--steps", "1", "2"]
        + ["--iterations", "1", "--threads", "1", "--opts", "MODEL.RESNETS.NORM", "FrozenBN"]
    )
    rows = report["rows"]
    assert [(row["accumulation_steps"], row["images_per_batch"]) for row in rows] == [
        (1, 2),
        (2, 1),
    ]
    for row in rows:
        assert row["seconds_per_step"] > 0
        assert row["peak_mib"] >= row["before_training_mib"] > 0
        assert math.isfinite(row["last_total_loss"]) and row["last_total_loss"] > 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{") :]) == report


def test_accumulation_benchmark_refuses_steps_that_do_not_divide_the_batch(capsys):
    benchmark_accumulation = load_script("tools/benchmark_accumulation.py")
    with pytest.raises(SystemExit):
        benchmark_accumulation.main(["--ims-per-batch", "4", "--steps", "3"])
    assert "--steps 3 does not divide --ims-per-batch 4" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_sliding_window_benchmark_report(capsys, task):
    benchmark_sliding = load_script("tools/benchmark_sliding_window.py")
    report = benchmark_sliding.main(
        ["--config-file", TINY_CONFIG, "--image-size", "100", "150", "--window", "64", "64"]
        + ["--stride", "48", "48", "--windows-per-pass", "2", "--threads", "1", "--task", task]
        + ["--opts", "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "False"]
    )
    rows = report["rows"]
    assert [(row["setting"], row["windows"]) for row in rows] == [
        ("whole image", None),
        ("windows, 2/pass", 2 * 3),
    ]
    for row in rows:
        assert row["seconds"] > 0 and row["peak_mib"] >= row["before_mib"] > 0
        if task == "semantic":
            assert 0.0 <= row["same_label_as_whole"] <= 1.0 and row["instances"] is None
        else:
            assert "same_label_as_whole" not in row and 0 < row["instances"] <= 100
    if task == "semantic":
        assert rows[0]["same_label_as_whole"] == 1.0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{") :]) == report


@pytest.mark.slow
def test_evaluation_benchmark_report(weights, capsys):
    benchmark_evaluation = load_script("tools/benchmark_evaluation.py")
    report = benchmark_evaluation.main(
        ["--config-file", TINY_CONFIG, "--weights", weights, "--precisions", "float32"]
        + ["bfloat16", "--warmup", "1", "--threads", "1"]
    )
    rows = report["rows"]
    assert [row["precision"] for row in rows] == ["float32", "bfloat16"]
    for row in rows:
        assert row["images"] == 50 and row["seconds"] > 0
        assert row["seconds_per_image"] == pytest.approx(row["seconds"] / 50, abs=1e-3)
        assert {"panoptic_seg/PQ", "segm/AP", "sem_seg/mIoU"} <= set(row["metrics"])
        assert all(math.isfinite(value) for value in row["metrics"].values())
    assert set(rows[0]["change"].values()) == {0.0}
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{") :]) == report


# the official release, to measure against, where ../shared holds it (CI's and GPU machines do)
OFFICIAL_RELEASE = os.path.join(ROOT, "..", "shared", "gpu", "baseline", "Mask2Former")


def test_data_loading_benchmark_report(capsys):
    benchmark_data_loading = load_script("tools/benchmark_data_loading.py")
    mappers = ["coco_panoptic_lsj", "mask_former_semantic", "coco_instance_lsj"]
    official = os.path.isdir(os.path.join(OFFICIAL_RELEASE, "mask2former"))
    rows = benchmark_data_loading.main(
        ["--images", "2", "--segments", "6", "--repeats", "1", "--mappers", *mappers]
        + (["--official", OFFICIAL_RELEASE] if official else [])
    )
    assert [row["mapper"] for row in rows] == mappers
    assert all(row["ours_ms"] > 0 for row in rows)
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("[\n") :]) == rows
    if not official:
        return
    panoptic, semantic, instance = rows
    # the same records, config and seed: the official mappers' targets, pixel for pixel
    assert panoptic["identical_targets"] == semantic["identical_targets"] == "2/2"
    assert panoptic["speedup_vs_official"] > 0
    if "official_ms" in instance:  # it needs shapely
        # polygons cut off by the crop differ by a few pixels at the crop's edge
        assert instance["mean_mask_iou"] > 0.99
    else:
        assert "shapely" in instance["note"]


def test_optimizer_benchmark_report(capsys):
    benchmark_optimizer = load_script("tools/benchmark_optimizer.py")
    rows = benchmark_optimizer.main(["--threads", "1", "--repeats", "1"])
    assert [row["variant"] for row in rows] == ["fused", "unfused", "MODEL_EMA update"]
    assert all(row["median_ms"] > 0 for row in rows)
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("[\n") :]) == rows


def test_video_clips_benchmark_report(tmp_path, capsys):
    from detectron2.modeling import build_model
    from helpers import NARROW_HEADS

    from mask2former.config import load_config

    benchmark_clips = load_script("tools/benchmark_video_clips.py")
    config = os.path.join(ROOT, "configs", "shapes", "video_maskformer2_R18.yaml")
    torch.manual_seed(0)
    model = build_model(load_config(config, ["MODEL.DEVICE", "cpu", *NARROW_HEADS]))
    weights = str(tmp_path / "random.pth")
    torch.save({"model": model.state_dict()}, weights)
    report = benchmark_clips.main(
        ["--config-file", config, "--weights", weights, "--settings", "0:0", "5:0", "2:1"]
        + ["--num-videos", "2", "--num-frames", "5", "--threads", "1"]
        + ["--data-dir", str(tmp_path / "videos"), "--opts", *NARROW_HEADS]
    )
    rows = report["rows"]
    assert [(row["clip_length"], row["clip_overlap"]) for row in rows] == [(0, 0), (5, 0), (2, 1)]
    for row in rows:
        assert all(0 <= row[name] <= 100 for name in benchmark_clips.METRICS), row
        assert row["seconds_per_frame"] > 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{") :]) == report
    with pytest.raises(SystemExit):
        benchmark_clips.parse_args(
            ["--config-file", config, "--weights", weights, "--settings", "3:3"]
        )


@pytest.fixture
def profile_inference(monkeypatch):
    # the tool imports tools/benchmark_inference.py as a module of its folder
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    return load_script("tools/profile_inference.py")


@pytest.mark.parametrize("device, precision", DEVICE_PRECISION)
def test_inference_profile_report(profile_inference, tmp_path, capsys, device, precision):
    path = tmp_path / "profile.json"
    profile_inference.main(
        [*TINY_RUN[:8], "--device", device, "--precision", precision, "--batch-size", "2"]
        + ["--warmup", "1", "--repeats", "2", "--top", "1000", "--json-out", str(path)]
    )
    report = json.loads(path.read_text())
    assert json.loads(capsys.readouterr().out.split("\n\n")[0]) == report
    assert (report["device"], report["precision"], report["batch_size"]) == (device, precision, 2)
    assert _positive(report["wall_ms"])
    # every host operator is listed (--top 1000), the model's convolutions among them
    host = {row["name"]: row for row in report["top_host"]}
    assert any("conv" in name for name in host), sorted(host)
    assert all(_positive(row["self_host_ms"]) for row in report["top_host"])
    # 2 inferences of one batch of 2: each forward calls the op once (one encoder layer)
    [op] = [row for name, row in host.items() if "ms_deform_attn_forward" in name]
    assert op["calls_per_image"] == 0.5
    assert ("device_busy_ms" in report) == ("top_device" in report) == (device == "cuda")
    if device == "cuda":
        assert 0 < report["device_busy_share"] <= 1.0
        assert report["kernel_launches"] > 0
        assert report["device_busy_ms"] >= report["top_device"][0]["device_ms"] > 0


def test_inference_profile_runs_each_inference_in_its_own_autocast_region(
    profile_inference, monkeypatch
):
    """As a Predictor call does: one autocast region around all inferences would keep the
    weights' casts from the first and hide those every call makes."""
    from contextlib import nullcontext

    regions, calls = [], []
    monkeypatch.setattr(
        profile_inference,
        "precision_autocast",
        lambda precision, device_type: regions.append(precision) or nullcontext(),
    )

    class Model:
        device = torch.device("cpu")

        def __call__(self, inputs):
            calls.append(len(regions))

    profile_inference.profile_inference(Model(), [{}], "bf16", warmup=2, repeats=3)
    assert regions == ["bf16"] * 5 and calls == [1, 2, 3, 4, 5]


def test_inference_profile_counts_device_events_once(profile_inference):
    """The busy time sums the device-side events only: the host operators that launched them
    carry the same time as their own device time and must not count twice."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(key, device_type, host_us=0.0, device_us=0.0, count=1):
        return SimpleNamespace(
            key=key,
            device_type=device_type,
            count=count,
            self_cpu_time_total=host_us,
            self_device_time_total=device_us,
        )

    events = [
        event("aten::conv2d", DeviceType.CPU, host_us=300.0, device_us=2000.0, count=4),
        event("cudaLaunchKernel", DeviceType.CPU, host_us=100.0, count=40),
        event("cudaMemcpyAsync", DeviceType.CPU, host_us=50.0, count=2),
        event("implicit_gemm_kernel", DeviceType.CUDA, device_us=1500.0, count=4),
        event("Memcpy HtoD", DeviceType.CUDA, device_us=500.0, count=2),
    ]
    report = profile_inference.summarise(events, images=2, wall_s=0.004, on_cuda=True)
    assert report["wall_ms"] == pytest.approx(2.0)
    assert report["device_busy_ms"] == pytest.approx(1.0)  # (1500 + 500) us over 2 images
    assert report["device_busy_share"] == pytest.approx(0.5)
    assert report["kernel_launches"] == 20
    assert [row["name"] for row in report["top_device"]] == ["implicit_gemm_kernel", "Memcpy HtoD"]
    assert report["top_device"][0] == {
        "name": "implicit_gemm_kernel",
        "calls_per_image": 2.0,
        "device_ms": pytest.approx(0.75),
    }
    assert [row["name"] for row in report["top_host"]] == [
        "aten::conv2d",
        "cudaLaunchKernel",
        "cudaMemcpyAsync",
    ]
    assert "device_busy_ms" not in profile_inference.summarise(events, 2, 0.004, on_cuda=False)


def test_instance_sets_match_whatever_the_order(tmp_path, capsys):
    compare = load_script("tools/compare_instance_sets.py")
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 12, 16, generator=generator) > 0.5
    image = {
        "scores": torch.rand(6, generator=generator),
        "pred_classes": torch.tensor([3, 3, 1, 0, 7, 3]),
        "pred_masks": masks,
    }
    order = torch.tensor([5, 2, 0, 4, 1, 3])
    shuffled = {key: value[order] for key, value in image.items()}

    def save(name, *outputs):
        torch.save({"outputs": list(outputs)}, tmp_path / name)
        return str(tmp_path / name)

    first = save("first.pt", image, {"sem_seg": torch.zeros(2, 4, 4)})
    assert compare.main([first, save("same.pt", shuffled, {})]) == 0
    out = capsys.readouterr().out.splitlines()
    result = json.loads(out[0])
    assert result == {
        "image": 0,
        "instances": [6, 6],
        "matched": 6,
        "same_order": False,
        "min_iou": 1.0,
    }
    assert out[-1] == "OK: 1 images, 6 instances matched"
    assert compare.main([first, first]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["same_order"]

    # another class, a score off by more than the tolerance, or a mask changed: caught
    changed_class = dict(shuffled, pred_classes=shuffled["pred_classes"].clone())
    changed_class["pred_classes"][0] = 9
    changed_score = dict(shuffled, scores=shuffled["scores"] + torch.tensor([0, 0, 1e-3, 0, 0, 0]))
    changed_mask = dict(shuffled, pred_masks=shuffled["pred_masks"].clone())
    changed_mask["pred_masks"][4] = ~changed_mask["pred_masks"][4]
    for name, other, matched in [
        ("class.pt", changed_class, 5),
        ("score.pt", changed_score, 5),
        ("mask.pt", changed_mask, 6),
    ]:
        assert compare.main([first, save(name, other, {})]) == 1, name
        result = json.loads(capsys.readouterr().out.splitlines()[0])
        assert result["matched"] == matched, name
        if name == "mask.pt":
            assert result["min_iou"] < 0.5


def test_startup_benchmark_report(capsys):
    benchmark_startup = load_script("tools/benchmark_startup.py")
    # two turns of the same checkout; "import os" keeps the test quick
    status = benchmark_startup.main(
        ["--repeats", "2", "--checkout", ROOT, "--checkout", ROOT, "--statements", "import os"]
    )
    assert status == 0
    output = capsys.readouterr().out
    report = json.loads(output[output.index("{") :])
    assert report["repeats"] == 2 and len(report["results"]) == 2
    for row in report["results"]:
        assert row["statement"] == "import os"
        assert 0 < row["min_s"] <= row["median_s"]
        assert row["deferred_modules_loaded"] == []
    assert report["results"][0]["vs_first_checkout"] == 1.0


def test_startup_benchmark_refuses_a_folder_without_the_package(tmp_path, capsys):
    benchmark_startup = load_script("tools/benchmark_startup.py")
    with pytest.raises(SystemExit):
        benchmark_startup.main(["--checkout", str(tmp_path)])
    assert "no mask2former package" in capsys.readouterr().err
