#!/usr/bin/env python
"""List the operations of one inference that would make the host wait for a CUDA device.

Runs a config's model (default: R50 COCO panoptic, randomly initialised as in
tools/benchmark_inference.py, all three outputs on) on one random image on the CPU, under
``mask2former.utils.host_syncs.HostSyncRecorder``, and prints, per stage, every operation that
would synchronise the host with a GPU (``.item()``, ``.tolist()``, ``nonzero``, boolean-mask
indexing, blocking copies, ...), how often it ran and the line of mask2former/ that caused it;
and per stage the number of aten operations that would each launch work on a GPU (views and
bare allocations left out): the launch overhead of an inference, counted the same on every run.

Stages: ``backbone``, ``pixel_decoder``, ``transformer_decoder``, ``network`` (the rest of the
network's forward), ``postprocessing`` (on the network's outputs; random weights, so no query
is confident and panoptic and instance inference have little to do) and
``postprocessing_realistic`` (the same post-processing on the realistic predictions of
tools/benchmark_inference.py: 25 confident queries). Pre-processing is left out: detectron2's
padding computes with small host tensors, which a CPU run cannot tell from device tensors.

On the CPU (the default) nothing waits: the counts are what the same code would do on a GPU,
where ``--device cuda`` records the reads of tensors that really are on the device.

``--prepared`` first prepares the model as ``Predictor(cuda_graphs=True)`` does
(``MaskFormer.prepare_for_inference``: frozen batch norms folded into their convolutions; in
bf16 / fp16 the weights autocast would cast at every forward stored in that dtype).

Examples:
    python tools/count_host_syncs.py --json-out output/host_syncs.json
    python tools/count_host_syncs.py --precision bf16 --top 30
    python tools/count_host_syncs.py --precision bf16 --prepared
"""

import argparse
from typing import Dict, List

import torch
from benchmark_inference import (
    add_device_arguments,
    add_model_arguments,
    benchmark_image,
    build_benchmark_model,
    check_device,
    run_description,
    synthetic_predictions,
    write_report,
)

from mask2former.predictor import PRECISIONS, precision_autocast
from mask2former.utils.host_syncs import HostSyncRecorder, format_table

STAGES = [
    "backbone",
    "pixel_decoder",
    "transformer_decoder",
    "network",
    "postprocessing",
    "postprocessing_realistic",
]


def count_host_syncs(
    model, image: torch.Tensor, output_size, precision: str = "fp32"
) -> HostSyncRecorder:
    """Record one inference of ``model`` (eval mode) on ``image`` (3, H, W), results at
    ``output_size``, and one post-processing of realistic predictions, by stage, under the
    autocast of ``precision`` (as the Predictor runs; its casts count as operations)."""
    inputs = [{"image": image, "height": output_size[0], "width": output_size[1]}]
    recorder = HostSyncRecorder(model.device)
    recorder.watch(
        {
            "backbone": model.backbone,
            "pixel_decoder": model.sem_seg_head.pixel_decoder,
            "transformer_decoder": model.sem_seg_head.predictor,
        }
    )
    predictor = model.sem_seg_head.predictor
    with torch.no_grad(), precision_autocast(precision, model.device.type):
        images = model.preprocess_image(inputs)
        padded = tuple(images.tensor.shape[-2:])
        class_logits, mask_logits = synthetic_predictions(
            predictor.num_queries,
            predictor.class_embed.out_features - 1,
            (padded[0] // 4, padded[1] // 4),
        )
        class_logits, mask_logits = class_logits.to(model.device), mask_logits.to(model.device)
        try:
            with recorder:
                with recorder.stage("network"):
                    outputs = model.network(images.tensor)
                with recorder.stage("postprocessing"):
                    model.inference(outputs, inputs, images)
                with recorder.stage("postprocessing_realistic"):
                    model.inference_single_image(
                        class_logits, mask_logits, padded, images.image_sizes[0], output_size
                    )
        finally:
            recorder.remove_hooks()
    return recorder


def report(recorder: HostSyncRecorder) -> Dict:
    """The JSON report: the count of synchronisations per stage and every (stage, operation,
    location); and the operations that launch device work, per stage and in all, and per
    (stage, aten operation), most frequent first."""
    syncs: List[Dict] = [
        {
            "stage": sync.stage,
            "operation": sync.operation,
            "location": sync.location,
            "count": count,
        }
        for sync, count in recorder.counts().items()
    ]
    operations = {stage: recorder.operation_count(stage) for stage in STAGES}
    kinds = [
        {"stage": stage, "operation": name, "count": count}
        for (stage, name), count in recorder.operation_kinds.most_common()
    ]
    return {
        "stages": {stage: recorder.count(stage) for stage in STAGES},
        "total": recorder.count(),
        "syncs": syncs,
        "operations": {**operations, "total": sum(operations.values())},
        "operation_kinds": kinds,
    }


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    add_device_arguments(parser)  # under --precision's autocast, its casts are operations too
    parser.add_argument(
        "--top",
        type=int,
        default=15,
        help="print this many of the most frequent (stage, operation) pairs (all in the JSON)",
    )
    parser.add_argument(
        "--prepared",
        action="store_true",
        help="prepare the model for inference first, as Predictor(cuda_graphs=True) does",
    )
    parser.add_argument("--json-out", default=None, help="also write the JSON report here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    check_device(parser, args.device)

    model = build_benchmark_model(args.config_file, list(args.opts), args.device)
    if args.prepared:
        model.prepare_for_inference(PRECISIONS[args.precision])
    image = benchmark_image(args.image_size)
    recorder = count_host_syncs(model, image, tuple(args.output_size), args.precision)
    result = {
        **run_description(args),
        "prepared": args.prepared,
        **report(recorder),
    }
    write_report(result, args.json_out)
    print()
    print(f"{'stage':<26}{'syncs':>6}{'operations':>12}")
    for stage in [*STAGES, "total"]:
        syncs = result["total"] if stage == "total" else result["stages"][stage]
        print(f"{stage:<26}{syncs:>6}{result['operations'][stage]:>12}")
    if recorder.events:
        print()
        print(format_table(recorder.counts()))
    if args.top > 0:
        print("\nmost frequent operations (stage, count, operation)")
        for kind in result["operation_kinds"][: args.top]:
            print(f"{kind['stage']:<26}{kind['count']:>6}  {kind['operation']}")
    return result


if __name__ == "__main__":
    main()
