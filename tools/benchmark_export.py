#!/usr/bin/env python
"""Time the export of Mask2Former networks with a dynamic batch and image size.

For each config, the model is built full size with random weights (no download) on the CPU,
then timed: ``torch.export`` of its network (:func:`mask2former.export.trace_program`, what
the exported-program format writes) and the conversion of that same program into a checked
ONNX file (:func:`mask2former.export.export_onnx`: translation, the ONNX optimiser,
``onnx.checker``, writing). The ONNX file's node count and size are reported too. Configs
run one after the other in this process.

Example:
    python tools/benchmark_export.py --json-out output/benchmark_export.json
"""

import argparse
import json
import os
import tempfile
import time
import warnings
from typing import Dict, List

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

import torch  # noqa: E402

from mask2former import Predictor  # noqa: E402
from mask2former.export import describe_model, export_onnx, trace_program  # noqa: E402
from mask2former.export.dependencies import require  # noqa: E402

DEFAULT_CONFIGS = [
    "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
    "configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml",
]


def measure(config: str, folder: str) -> Dict:
    """Export times (seconds), ONNX nodes and MiB of ``config``'s network."""
    onnx = require("onnx", "the ONNX export benchmark")
    predictor = Predictor(config, "", device="cpu")
    model = predictor.model.eval()
    start = time.perf_counter()
    program = trace_program(model)
    trace_seconds = time.perf_counter() - start
    path = os.path.join(folder, "model.onnx")
    start = time.perf_counter()
    export_onnx(model, describe_model(predictor.cfg, model), path, program=program)
    onnx_seconds = time.perf_counter() - start
    return {
        "config": config,
        "torch_export_s": round(trace_seconds, 1),
        "onnx_conversion_s": round(onnx_seconds, 1),
        "total_onnx_s": round(trace_seconds + onnx_seconds, 1),
        "onnx_nodes": len(onnx.load(path, load_external_data=False).graph.node),
        "onnx_mib": round(os.path.getsize(path) / 2**20, 1),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-files", nargs="+", default=DEFAULT_CONFIGS, metavar="FILE")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--json-out", default=None, help="also write the JSON report here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: List[Dict] = []
    with tempfile.TemporaryDirectory() as folder:
        for config in args.config_files:
            results.append(measure(config, folder))
    width = max(len(row["config"]) for row in results)
    header = f"{'config':{width}} {'torch.export s':>14} {'ONNX conv. s':>12}"
    header += f" {'nodes':>6} {'MiB':>6}"
    print(f"threads {torch.get_num_threads()}")
    print(header)
    print("-" * len(header))
    for row in results:
        print(
            f"{row['config']:{width}} {row['torch_export_s']:14.1f} "
            f"{row['onnx_conversion_s']:12.1f} {row['onnx_nodes']:6d} {row['onnx_mib']:6.1f}"
        )
    report = json.dumps(results, indent=2)
    print(report)
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as handle:
            handle.write(report + "\n")


if __name__ == "__main__":
    main()
