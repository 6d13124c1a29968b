#!/usr/bin/env python
"""Where one inference's time goes: torch.profiler over a few whole inferences.

Runs a config's model (default: R50 COCO panoptic, randomly initialised as in
tools/benchmark_inference.py, all three outputs on) on one random image, or a batch of copies
of it, already on the device, under the autocast of ``--precision`` (as the Predictor does),
post-processing included. After ``--warmup`` inferences it profiles ``--repeats`` of them and
reports, per image:

- ``wall_ms``: host time of an inference, the device waited for;
- ``device_busy_ms``: the time device kernels and copies ran (CUDA only), and its share of the
  wall time: a small share means the device waits for the host (kernel launches, Python,
  synchronisations), so faster kernels alone would not help;
- ``kernel_launches``: calls that launch device work (CUDA only);
- the device kernels and copies that take the most time (CUDA only), and the host operators
  and calls with the most self time (their own, without what they call).

Prints a table, and the results as JSON (``--json-out`` writes them to a file as well).

Example (on a GPU machine):
    python tools/profile_inference.py --device cuda --precision bf16 --json-out profile.json
"""

import argparse
import time
from typing import Dict, List

import torch
from benchmark_inference import (
    add_device_arguments,
    add_model_arguments,
    benchmark_image,
    build_benchmark_model,
    check_device,
    cuda_description,
    device_clock,
    run_description,
    write_report,
)
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from mask2former.predictor import precision_autocast

# Runtime calls that put work on a CUDA device (the profiler records them as host events).
LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def _device_time_us(event) -> float:
    """An averaged event's self device time in microseconds (attribute renamed in torch 2.4)."""
    value = getattr(event, "self_device_time_total", None)
    return float(value if value is not None else getattr(event, "self_cuda_time_total", 0.0))


def _rows(events, key, column: str, images: int, count: int) -> List[Dict]:
    """The ``count`` events with the largest ``key`` (microseconds), per image."""
    ranked = sorted((event for event in events if key(event) > 0), key=key, reverse=True)
    return [
        {
            "name": event.key,
            "calls_per_image": event.count / images,
            column: key(event) / 1000 / images,
        }
        for event in ranked[:count]
    ]


def summarise(events, images: int, wall_s: float, on_cuda: bool, top: int = 25) -> Dict:
    """The report from the profiler's averaged events of ``images`` inferences that took
    ``wall_s``: the ``top`` device-side events (kernels, copies) by duration, whose sum over
    all is the busy time, and the ``top`` host-side events (operators, runtime calls) by self
    time."""
    device_events = [event for event in events if event.device_type == DeviceType.CUDA]
    host_events = [event for event in events if event.device_type == DeviceType.CPU]
    report = {
        "wall_ms": wall_s * 1000 / images,
        "top_host": _rows(
            host_events, lambda e: e.self_cpu_time_total, "self_host_ms", images, top
        ),
    }
    if on_cuda:
        busy_ms = sum(_device_time_us(event) for event in device_events) / 1000 / images
        launches = sum(event.count for event in host_events if event.key in LAUNCH_CALLS)
        report.update(
            device_busy_ms=busy_ms,
            device_busy_share=busy_ms / report["wall_ms"],
            kernel_launches=launches / images,
            top_device=_rows(device_events, _device_time_us, "device_ms", images, top),
        )
    return report


def profile_inference(
    model, inputs: List[Dict], precision: str, warmup: int, repeats: int, top: int = 25
) -> Dict:
    """Profile ``repeats`` inferences of ``model`` on ``inputs`` (one batch) after ``warmup``;
    returns :func:`summarise`'s report. Each inference runs in its own autocast region, as a
    Predictor call does: autocast keeps its casts of the weights until the region ends, so one
    region around all of them would hide the casts every call makes."""
    device = model.device
    clock = device_clock(device)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)

    def infer() -> None:
        with precision_autocast(precision, device.type):
            model(inputs)

    with torch.no_grad():
        for _ in range(warmup):
            infer()
        start = clock()
        with profile(activities=activities) as profiler:
            for _ in range(repeats):
                infer()
            clock()
        wall_s = time.perf_counter() - start
    images = repeats * len(inputs)
    return summarise(profiler.key_averages(), images, wall_s, device.type == "cuda", top)


def print_table(result: Dict) -> None:
    print(
        f"\n{result['device']} {result['precision']} batch {result['batch_size']}: "
        f"{result['wall_ms']:.2f} ms per image (host, device waited for)"
    )
    if "device_busy_ms" in result:
        print(
            f"device busy {result['device_busy_ms']:.2f} ms "
            f"({100 * result['device_busy_share']:.0f}% of the wall), "
            f"{result['kernel_launches']:.0f} kernel launches per image"
        )
    for title, rows, column in (
        ("device kernels and copies by time", result.get("top_device", []), "device_ms"),
        ("host operators and calls by self time", result["top_host"], "self_host_ms"),
    ):
        if not rows:
            continue
        print(f"\ntop {title} (ms per image, calls per image)")
        for row in rows:
            print(f"{row[column]:9.3f} {row['calls_per_image']:8.1f}  {row['name'][:100]}")


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    add_device_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=25, help="rows of each ranking (default: 25)")
    parser.add_argument("--json-out", default=None, help="also write the JSON report here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    if min(args.batch_size, args.repeats, args.top) < 1 or args.warmup < 0:
        parser.error("--batch-size, --repeats and --top must be at least 1, --warmup at least 0.")

    model = build_benchmark_model(args.config_file, list(args.opts), args.device)
    image = benchmark_image(args.image_size).to(model.device)
    inputs = [
        {"image": image, "height": args.output_size[0], "width": args.output_size[1]}
    ] * args.batch_size
    result = {
        **run_description(args),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        **cuda_description(args.device),
        **profile_inference(model, inputs, args.precision, args.warmup, args.repeats, args.top),
    }
    write_report(result, args.json_out)
    print_table(result)
    return result


if __name__ == "__main__":
    main()
