"""Benchmark multi-scale deformable attention at Mask2Former's pixel-decoder shapes.

Shapes: batch 2, 8 heads, 32 channels per head, 3 levels of a 1024x1024 image at strides
8/16/32 (128x128, 64x64, 32x32), 4 points per level, one query per value position
(Q = S = 21504). For every implementation available on the machine (reference and CPU
kernel on CPU, in float32 and bfloat16, which the CPU kernel computes on a float32 copy; CUDA
kernel in float32 / float16 / bfloat16 and the reference on CUDA), it
measures the median time of the forward pass and of forward + backward, and peak memory:

- CUDA: ``torch.cuda.max_memory_allocated`` above the memory held before the call.
- CPU: growth of the process's peak resident set size (VmHWM in /proc/self/status) over
  the first call, after resetting the peak to the current RSS (writing 5 to
  /proc/self/clear_refs, Linux >= 4.0). It counts every page the call touches: torch's
  temporaries and outputs (large blocks come straight from mmap, so freed memory leaves
  the RSS). tracemalloc does not see torch's allocations.

Sampling locations (``--locations``): ``encoder`` (default) puts them where the pixel
decoder's encoder puts them, around each query's own pixel on every level (so neighbouring
queries read neighbouring memory); ``uniform`` spreads them uniformly over the maps, a
worst case for caches. Speed-ups are relative to the reference on the same device, in the
same dtype where it is measured (CPU), else in float32 (CUDA).

Prints a table and, at the end, the results as JSON.

Usage:
    python tools/benchmark_ms_deform_attn.py [--device cpu|cuda|all] [--repeats 5]
        [--locations encoder|uniform]
"""

import argparse
import json
import math
import statistics
import time
from typing import Callable, Dict, List

import torch

from mask2former.modeling.pixel_decoder.ops import (
    implementation_for,
    ms_deform_attn,
    ms_deform_attn_reference,
)

SPATIAL_SHAPES = [(128, 128), (64, 64), (32, 32)]
BATCH, HEADS, CHANNELS, POINTS = 2, 8, 32, 4


def encoder_locations(generator: torch.Generator) -> torch.Tensor:
    """(N, Q, M, L, P, 2) locations as in the pixel decoder's encoder: each query sits at its
    own pixel centre, used as reference point on every level, and samples P points per head
    at 1..P pixels along the head's direction (MSDeformAttn's initial offsets) plus Gaussian
    noise of one pixel."""
    reference = []
    for height, width in SPATIAL_SHAPES:
        ys, xs = torch.meshgrid(
            (torch.arange(height) + 0.5) / height,
            (torch.arange(width) + 0.5) / width,
            indexing="ij",
        )
        reference.append(torch.stack([xs.flatten(), ys.flatten()], -1))
    reference = torch.cat(reference)  # (Q, 2)
    angles = torch.arange(HEADS) * (2 * math.pi / HEADS)
    directions = torch.stack([angles.cos(), angles.sin()], -1)  # (M, 2)
    steps = torch.arange(1, POINTS + 1, dtype=torch.float32)
    offsets = directions[:, None, None, :] * steps[None, None, :, None]  # (M, 1, P, 2)
    queries, levels = reference.shape[0], len(SPATIAL_SHAPES)
    noise = torch.randn(BATCH, queries, HEADS, levels, POINTS, 2, generator=generator)
    sizes = torch.tensor([[w, h] for h, w in SPATIAL_SHAPES], dtype=torch.float32)  # (L, 2)
    pixels = offsets + noise  # (N, Q, M, L, P, 2) in pixels of each level
    return reference[None, :, None, None, None, :] + pixels / sizes[None, None, None, :, None, :]


def make_inputs(device: torch.device, dtype: torch.dtype, locations: str, seed: int = 0):
    """Inputs at the benchmark shapes; ``locations`` is "encoder" (see encoder_locations)
    or "uniform" (uniform in [0, 1]: no memory locality at all, a worst case)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(SPATIAL_SHAPES, dtype=torch.int64)
    sizes = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    num_values = int(sizes.sum())
    levels = len(SPATIAL_SHAPES)
    value = torch.randn(BATCH, num_values, HEADS, CHANNELS, generator=generator)
    if locations == "encoder":
        sampling_locations = encoder_locations(generator)
    else:
        sampling_locations = torch.rand(
            BATCH, num_values, HEADS, levels, POINTS, 2, generator=generator
        )
    weights = torch.rand(BATCH, num_values, HEADS, levels, POINTS, generator=generator)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    location_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return (
        value.to(device, dtype).requires_grad_(),
        shapes.to(device),
        starts.to(device),
        sampling_locations.to(device, location_dtype).requires_grad_(),
        weights.to(device, location_dtype).requires_grad_(),
    )


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status: CPU memory needs Linux")


def reset_peak_rss() -> int:
    """Resets the peak RSS to the current RSS and returns the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_bytes("VmRSS")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], None], device: torch.device, repeats: int) -> Dict[str, float]:
    """Median seconds over ``repeats`` calls after a warm-up call, and peak memory in MiB."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = reset_peak_rss()
    fn()
    synchronize(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = _status_bytes("VmHWM") - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(times), "peak_mib": peak / 2**20}


def cases_for(device: torch.device) -> List[Dict]:
    """(name, dtype, function) of every implementation available on ``device``."""
    cases = []
    if device.type == "cpu":
        # bfloat16 (CPU autocast): the float32 kernel on a float32 copy against the reference
        for dtype in (torch.float32, torch.bfloat16):
            if implementation_for("cpu", dtype) != "reference":
                cases.append({"name": "cpu kernel", "dtype": dtype, "fn": ms_deform_attn})
            cases.append({"name": "reference", "dtype": dtype, "fn": ms_deform_attn_reference})
    else:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            if implementation_for("cuda", dtype) != "reference":
                cases.append({"name": "cuda kernel", "dtype": dtype, "fn": ms_deform_attn})
        cases.append({"name": "reference", "dtype": torch.float32, "fn": ms_deform_attn_reference})
    return cases


def run_case(case: Dict, device: torch.device, repeats: int, locations: str) -> Dict:
    inputs = make_inputs(device, case["dtype"], locations)
    fn = case["fn"]

    def forward():
        with torch.no_grad():
            fn(*inputs)

    grad = torch.randn(BATCH, inputs[3].shape[1], HEADS * CHANNELS, device=device).to(case["dtype"])

    def forward_backward():
        output = fn(*inputs)
        torch.autograd.grad(output, (inputs[0], inputs[3], inputs[4]), grad)

    result = {
        "device": device.type,
        "implementation": case["name"],
        "dtype": str(case["dtype"]).replace("torch.", ""),
    }
    for label, closure in (("forward", forward), ("forward_backward", forward_backward)):
        stats = measure(closure, device, repeats)
        result[f"{label}_ms"] = round(stats["median_ms"], 2)
        result[f"{label}_peak_mib"] = round(stats["peak_mib"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case")
    parser.add_argument(
        "--locations",
        choices=("encoder", "uniform"),
        default="encoder",
        help="sampling locations: around each query's pixel like the pixel decoder's encoder "
        "(default), or uniform over the maps (no locality, worst case)",
    )
    args = parser.parse_args()
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        parser.error("--device cuda: no CUDA device is available")

    results = []
    for device in devices:
        for case in cases_for(device):
            results.append(run_case(case, device, args.repeats, args.locations))
    for device in devices:
        rows = [r for r in results if r["device"] == device.type]
        references = {r["dtype"]: r for r in rows if r["implementation"] == "reference"}
        for row in rows:
            reference = references.get(row["dtype"], references["float32"])
            row["forward_speedup"] = round(reference["forward_ms"] / row["forward_ms"], 2)
            row["forward_backward_speedup"] = round(
                reference["forward_backward_ms"] / row["forward_backward_ms"], 2
            )

    header = (
        f"{'device':6} {'implementation':14} {'dtype':8} {'fwd ms':>9} {'fwd MiB':>8} "
        f"{'fwd+bwd ms':>11} {'f+b MiB':>8} {'fwd x':>6} {'f+b x':>6}"
    )
    print(
        f"batch {BATCH}, heads {HEADS}, channels/head {CHANNELS}, levels {SPATIAL_SHAPES}, "
        f"points {POINTS}, queries = values = {sum(h * w for h, w in SPATIAL_SHAPES)}, "
        f"{args.locations} locations, threads {torch.get_num_threads()}, "
        f"median of {args.repeats}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['device']:6} {r['implementation']:14} {r['dtype']:8} {r['forward_ms']:9.1f} "
            f"{r['forward_peak_mib']:8.1f} {r['forward_backward_ms']:11.1f} "
            f"{r['forward_backward_peak_mib']:8.1f} {r['forward_speedup']:6.2f} "
            f"{r['forward_backward_speedup']:6.2f}"
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
