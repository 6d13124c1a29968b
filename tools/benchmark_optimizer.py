"""Benchmark one optimizer step of the shapes model: AdamW with and without the fused kernel.

Builds the optimizer of ``configs/shapes/maskformer2_R18_panoptic.yaml`` (parameter groups,
full-model gradient clipping, as ``build_optimizer`` makes it) on the CPU, gives every
parameter a random gradient and times ``optimizer.step()`` with ``fused`` on and off, and the
update of the moving average of the weights that ``MODEL_EMA`` adds after each step. The
variants run in turn, ``--repeats`` rounds; each reports its median.

Prints a table and, at the end, the results as JSON.

Usage:
    python tools/benchmark_optimizer.py [--threads 2] [--repeats 30]
"""

import argparse
import json
import os
import statistics
import time
from typing import Dict, List, Tuple

import torch
from detectron2.modeling import build_model

from mask2former import modeling as _modeling  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.engine import optimizer as optimizer_module
from mask2former.engine.ema import ModelEMA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "shapes", "maskformer2_R18_panoptic.yaml")


def build(fused: bool) -> Tuple[torch.nn.Module, torch.optim.Optimizer]:
    cfg = load_config(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_model(cfg)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    optimizer = optimizer_module.build_optimizer(cfg, model)
    for group in optimizer.param_groups:
        group["fused"] = fused
    return model, optimizer


def main(argv=None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per variant")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, fused = build(True)
    unfused = build(False)[1]
    for optimizer in (fused, unfused):
        optimizer.step()  # creates the state
    average = ModelEMA(model, decay=0.9999)
    variants = {
        "fused": fused.step,
        "unfused": unfused.step,
        "MODEL_EMA update": lambda: average.update(model),
    }
    times: Dict[str, list] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    num_parameters = sum(p.numel() for group in fused.param_groups for p in group["params"])
    results = [
        {"variant": name, "median_ms": round(statistics.median(values) * 1000, 1)}
        for name, values in times.items()
    ]
    print(
        f"shapes R18 model, {num_parameters / 1e6:.1f} M parameters, "
        f"threads {torch.get_num_threads()}, median of {args.repeats} steps"
    )
    print(f"{'variant':20} {'median ms':>9}")
    for row in results:
        print(f"{row['variant']:20} {row['median_ms']:9.1f}")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
