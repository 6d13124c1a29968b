#!/usr/bin/env python
"""Inference time of Mask2Former R50 on a COCO-panoptic-sized input, stage by stage.

Image models only: a video config (``VideoMaskFormer``) is refused at once.

The model is randomly initialised (no download): 133 classes, 100 queries, all three outputs
on. The variants are timed each in its own process, one after the other:

- ``ours``: the deformable attention kernel, attention masks made at each level's resolution
  (no full-size masks for the intermediate layers), this package's post-processing, and the
  CPU allocator set to keep freed memory (``mask2former.utils.cpu_memory``), as the demo,
  the predictor and train_net.py do;
- ``ours-default-malloc``: the same with glibc's default allocator behaviour;
- ``ours-default-layout``: ours with a ResNet backbone on images in the default memory
  layout, not channels-last (``MaskFormer.cpu_channels_last``);
- ``official-style``: what the official release does on a CPU: the PyTorch deformable
  attention, every decoder layer's masks at full size, the straightforward post-processing
  (upsample all 100 masks to the padded size, crop and resize, sigmoid per output, a Python
  loop per panoptic segment, every top-k mask gathered at full size), default allocator, the
  backbone on images in the default memory layout (ours: channels-last for a ResNet);
- ``onnxruntime``: ours with the network exported to ONNX (``mask2former.export``, not timed)
  and run by ONNX Runtime on the CPU; pre- and post-processing are ours, the same code;
- ``ours-compiled``: ours with the network under ``torch.compile`` (compiled at the warm-up
  forward, not timed);
- ``ours-cuda-graphs`` (CUDA only): the same with ``mode="reduce-overhead"``, which replays
  the compiled network as CUDA graphs (one launch instead of one per kernel);
- ``ours-graphed`` (CUDA only): ours with the network replayed from a CUDA graph without
  compiling (``MaskFormer.use_cuda_graphs``, as ``Predictor(cuda_graphs=True)``: frozen
  batch norms folded into the convolutions, in bf16 / fp16 the convolution, linear and
  attention weights stored in that dtype); captured at the warm-up forward, not timed.

The network is timed as a whole for every variant, and per stage (forward hooks) for the
uncompiled PyTorch ones that run it eagerly.

``--device cuda`` runs the model on the GPU (``ours``, ``official-style``, ``ours-compiled``,
``ours-cuda-graphs`` and ``ours-graphed``; the other variants are CPU comparisons and are
refused there). The clock then waits for the GPU (``torch.cuda.synchronize``) at every stage
boundary, so that kernels launched asynchronously are charged to the stage that launched
them; these waits keep the host from queueing the next stage early, so the stage times add up
to slightly more than an unhooked forward. On the GPU the allocator setting of ``ours`` does
not apply (it is a CPU matter), and ``official-style`` uses our CUDA kernel for the deformable
attention, as the official release uses its own CUDA kernel there (``bash
.gpu/side_by_side.sh`` times the release itself). ``--precision bf16`` / ``fp16`` runs the
forwards under autocast, as ``Predictor(precision=...)`` does; ``--batch-size N`` runs N
copies of the image in one forward, and the report gives the time per image and images per
second. On CUDA each variant also reports the peak memory allocated during its forwards,
weights included (``forward_peak_memory_mib``).

A randomly initialised model has no confident query, so post-processing is timed on
synthetic predictions with realistic structure (blob-shaped masks, 25 confident queries);
ours is checked to give the same results as the straightforward one. End to end = the
network + that post-processing.

Two more variants compare with Hugging Face transformers on one Hub-format model (a
randomly initialised Swin-T COCO-panoptic ``Mask2FormerForUniversalSegmentation`` written with
``save_pretrained``, 133 classes, 100 queries), panoptic output only, each in its own process:

- ``transformers``: its image processor (resize to 800 px, sides rounded up to multiples of
  32), the model, ``post_process_panoptic_segmentation`` at the original size;
- ``ours-from-hf``: ``Predictor.from_hf`` on the same folder (resize to 800 px, padded to
  multiples of 32), as a user of the Hub would run it.

Each times a whole image of ``--output-size`` (uint8 in, panoptic result out; random weights,
so its post-processing has nothing to do), plus both post-processings on the realistic
predictions.

The post-processing of the realistic predictions runs on the model's device, in float32 (as
ours does under any precision); at batch N, end to end = the network + N post-processings.

Examples:
    python tools/benchmark_inference.py --repeats 2 --json-out output/benchmark_inference.json
    # on a GPU: mixed precision, one image, then throughput at batch 8
    python tools/benchmark_inference.py --device cuda --precision bf16 --repeats 10 \
        --variants ours official-style
    python tools/benchmark_inference.py --device cuda --precision fp16 --batch-size 8 \
        --repeats 5 --variants ours official-style --json-out output/inference_cuda_fp16_b8.json
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, Instances

import mask2former.modeling  # noqa: F401  (registers MaskFormer)
from mask2former.config import UnknownConfigKeyError, load_config
from mask2former.data import is_video_config
from mask2former.modeling.pixel_decoder.ops import functional as ms_deform_attn_functional
from mask2former.predictor import PRECISIONS, precision_autocast
from mask2former.utils.cpu_memory import keep_freed_memory

DEFAULT_CONFIG = "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"
METADATA = "mask2former_benchmark_inference"
NUM_THINGS = 80


def benchmark_config(config: str, opts: List[str], device: str = "cpu") -> CfgNode:
    """``config`` on ``device`` without weights, with stand-in metadata (80 thing classes)."""
    MetadataCatalog.get(METADATA).set(
        thing_dataset_id_to_contiguous_id={i: i for i in range(NUM_THINGS)}
    )
    cfg = load_config(config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device, *opts])
    cfg.DATASETS.TRAIN = (METADATA,)
    return cfg


def build_benchmark_model(config: str, opts: List[str], device: str = "cpu") -> torch.nn.Module:
    """The model of ``config`` with random weights (the same on every device), in eval mode."""
    cfg = benchmark_config(config, opts, device)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def device_clock(device: torch.device) -> Callable[[], float]:
    """``time.perf_counter`` that first waits for the work queued on ``device`` (on CUDA), so
    that the interval between two readings holds the kernels launched in it."""
    if device.type != "cuda":
        return time.perf_counter

    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock


class StageTimer:
    """Wall time of submodule forwards, accumulated per name, via forward hooks; ``clock``
    (see :func:`device_clock`) is read at every hook."""

    def __init__(self, modules: Dict[str, torch.nn.Module], clock: Callable[[], float]):
        self.times: Dict[str, float] = defaultdict(float)
        self._starts: Dict[str, float] = {}
        self._clock = clock
        for name, module in modules.items():
            module.register_forward_pre_hook(self._pre_hook(name))
            module.register_forward_hook(self._post_hook(name))

    def _pre_hook(self, name: str) -> Callable:
        def hook(module, inputs):
            self._starts[name] = self._clock()

        return hook

    def _post_hook(self, name: str) -> Callable:
        def hook(module, inputs, outputs):
            self.times[name] += self._clock() - self._starts[name]

        return hook

    def reset(self) -> None:
        self.times.clear()


def time_forwards(
    model,
    inputs: List[Dict],
    repeats: int,
    stages: bool = True,
    *,
    device: Union[str, torch.device] = "cpu",
    precision: str = "fp32",
) -> Tuple[List[Dict[str, float]], float, Dict]:
    """Seconds of the network and, with ``stages``, of each stage (by forward hooks), in
    ``repeats`` forwards after one warm-up; the seconds of the warm-up forward (which
    includes compiling under torch.compile); and what the network returned (the batch size
    and dtype of its mask predictions). The forwards run under ``precision``'s autocast on
    ``device``, whose queued work every reading of the clock waits for."""
    device = torch.device(device)
    clock = device_clock(device)
    modules = {}
    if stages:
        modules = {
            "backbone": model.backbone,
            "pixel_decoder": model.sem_seg_head.pixel_decoder,
            "transformer_decoder": model.sem_seg_head.predictor,
        }
    timer = StageTimer(modules, clock)
    network = model.run_network  # the network, or its CUDA-graph replay
    network_output = {}

    def timed_network(*args, **kwargs):
        start = clock()
        result = network(*args, **kwargs)
        timer.times["network"] += clock() - start
        masks = result["pred_masks"]
        network_output.update(batch_size=len(masks), dtype=str(masks.dtype).replace("torch.", ""))
        return result

    model.run_network = timed_network
    inference = model.inference

    def timed_inference(*args, **kwargs):
        start = clock()
        result = inference(*args, **kwargs)
        timer.times["postprocessing"] += clock() - start
        return result

    model.inference = timed_inference
    runs = []
    with torch.no_grad():
        for run in range(repeats + 1):
            timer.reset()
            start = clock()
            with precision_autocast(precision, device.type):
                model(inputs)
            total = clock() - start
            if run > 0:
                runs.append({**timer.times, "total": total})
            else:
                runs_warmup_s = total
    del model.inference
    del model.run_network
    return runs, runs_warmup_s, network_output


def synthetic_predictions(num_queries: int, num_classes: int, mask_size, seed: int = 0):
    """Predictions with realistic structure, at 1/4 resolution.

    25 confident queries (class probability ~0.99; all of them when there are fewer) whose
    masks tile the image (Voronoi cells with smooth borders, so panoptic inference keeps them)
    and the others (75 of the official 100) unconfident, with random blob masks.
    """
    generator = torch.Generator().manual_seed(seed)
    num_confident = min(25, num_queries)
    class_logits = torch.randn(num_queries, num_classes + 1, generator=generator)
    confident = torch.randperm(num_queries, generator=generator)[:num_confident]
    classes = torch.randint(num_classes, (num_confident,), generator=generator)
    class_logits[confident, classes] = 10.0
    coarse_size = (mask_size[0] // 8, mask_size[1] // 8)
    coarse = torch.randn(num_queries, *coarse_size, generator=generator) * 6 - 4
    ys, xs = torch.meshgrid(
        torch.linspace(0, 1, coarse_size[0]), torch.linspace(0, 1, coarse_size[1]), indexing="ij"
    )
    centers = torch.rand(num_confident, 2, generator=generator)
    distances = (ys[None] - centers[:, 0, None, None]) ** 2 + (
        xs[None] - centers[:, 1, None, None]
    ) ** 2
    nearest = distances.argmin(0)
    for cell, query in enumerate(confident.tolist()):
        coarse[query] = torch.where(nearest == cell, 6.0, -6.0) + coarse[query] * 0.1
    mask_logits = F.interpolate(coarse[:, None], size=mask_size, mode="bilinear")[:, 0]
    return class_logits, mask_logits


def straightforward_postprocess(model, class_logits, mask_logits, padded, image_size, output):
    """The official release's post-processing of one image (real boxes aside: zero there), on
    the device of the predictions."""
    device = mask_logits.device
    masks = F.interpolate(mask_logits[None], size=padded, mode="bilinear", align_corners=False)[0]
    masks = sem_seg_postprocess(masks, image_size, *output)
    num_classes = class_logits.shape[-1] - 1
    things = set(model.metadata.thing_dataset_id_to_contiguous_id.values())
    result = {
        "sem_seg": torch.einsum("qc,qhw->chw", class_logits.softmax(-1)[:, :-1], masks.sigmoid())
    }

    scores, labels = class_logits.softmax(-1).max(-1)
    probs = masks.sigmoid()
    keep = labels.ne(num_classes) & (scores > model.object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], probs[keep]
    panoptic_seg = torch.zeros(output, dtype=torch.int32, device=device)
    segments_info, stuff, segment_id = [], {}, 0
    if len(cur_masks):
        cur_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
        for k in range(len(cur_classes)):
            category = cur_classes[k].item()
            isthing = category in things
            mask_area = (cur_ids == k).sum().item()
            original_area = (cur_masks[k] >= 0.5).sum().item()
            mask = (cur_ids == k) & (cur_masks[k] >= 0.5)
            if mask_area > 0 and original_area > 0 and mask.sum().item() > 0:
                if mask_area / original_area < model.overlap_threshold:
                    continue
                if not isthing:
                    if category in stuff:
                        panoptic_seg[mask] = stuff[category]
                        continue
                    stuff[category] = segment_id + 1
                segment_id += 1
                panoptic_seg[mask] = segment_id
                segments_info.append(
                    {"id": segment_id, "isthing": isthing, "category_id": category}
                )
    result["panoptic_seg"] = (panoptic_seg, segments_info)

    class_probs = class_logits.softmax(-1)[:, :-1]
    # (the release fails on a model with fewer query-class pairs than that; ours keeps them all)
    topk = min(model.test_topk_per_image, class_probs.numel())
    top_scores, top = class_probs.flatten().topk(topk, sorted=True)
    top_labels, top_queries = top % num_classes, top // num_classes
    is_thing = torch.tensor(
        [label in things for label in top_labels.tolist()], dtype=torch.bool, device=device
    )
    top_scores, top_labels = top_scores[is_thing], top_labels[is_thing]
    top_masks = masks[top_queries[is_thing]]
    instances = Instances(output)
    instances.pred_masks = (top_masks > 0).float()
    instances.pred_boxes = Boxes(torch.zeros(len(top_masks), 4, device=device))
    flat = instances.pred_masks.flatten(1)
    mask_scores = (top_masks.sigmoid().flatten(1) * flat).sum(1) / (flat.sum(1) + 1e-6)
    instances.scores = top_scores * mask_scores
    instances.pred_classes = top_labels
    result["instances"] = instances
    return result


def time_postprocessing(model, padded, image_size, output, repeats: int, official: bool) -> Dict:
    """Seconds of one post-processing on realistic predictions (median of ``repeats``), on the
    model's device (waiting for the GPU before each reading of the clock).

    For ours, also how far its results are from the straightforward post-processing's.
    """
    num_classes = model.sem_seg_head.predictor.class_embed.out_features - 1
    mask_size = (padded[0] // 4, padded[1] // 4)
    class_logits, mask_logits = (
        prediction.to(model.device)
        for prediction in synthetic_predictions(
            model.sem_seg_head.predictor.num_queries, num_classes, mask_size
        )
    )
    clock = device_clock(model.device)
    if official:
        postprocess = functools.partial(straightforward_postprocess, model)
    else:
        postprocess = model.inference_single_image
    wall, cpu = [], []
    with torch.no_grad():
        for run in range(repeats + 1):
            start, start_cpu = clock(), time.process_time()
            result = postprocess(class_logits, mask_logits, padded, image_size, output)
            if run > 0:
                wall.append(clock() - start)
                cpu.append(time.process_time() - start_cpu)
        report = {
            "wall_s": statistics.median(wall),
            # CPU time of all threads: less sensitive than wall time to other load.
            "cpu_s": statistics.median(cpu),
            "instances": len(result["instances"]),
            "panoptic_segments": len(result["panoptic_seg"][1]),
        }
        if not official:
            reference = straightforward_postprocess(
                model, class_logits, mask_logits, padded, image_size, output
            )
            report["differences_from_straightforward"] = {
                "sem_seg_max_abs": float((result["sem_seg"] - reference["sem_seg"]).abs().max()),
                "panoptic_pixels": int(
                    (result["panoptic_seg"][0] != reference["panoptic_seg"][0]).sum()
                ),
                "panoptic_segments": len(reference["panoptic_seg"][1])
                - report["panoptic_segments"],
                "instance_mask_pixels": int(
                    (
                        result["instances"].pred_masks != reference["instances"].pred_masks.bool()
                    ).sum()
                ),
            }
    return report


# What each variant changes. "official-style" stands in for the official release on a CPU:
# the PyTorch deformable attention, every decoder layer's masks at full size, the
# straightforward post-processing, glibc's default allocator, and the backbone on images in the
# default memory layout (ours runs a ResNet on channels-last images on the CPU).
VARIANTS = {
    "ours": {
        "reference_op": False,
        "full_size_aux": False,
        "official_post": False,
        "keep_memory": True,
        "cpu_channels_last": True,
    },
    "ours-default-malloc": {
        "reference_op": False,
        "full_size_aux": False,
        "official_post": False,
        "keep_memory": False,
        "cpu_channels_last": True,
    },
    "official-style": {
        "reference_op": True,
        "full_size_aux": True,
        "official_post": True,
        "keep_memory": False,
        "cpu_channels_last": False,
    },
}
# The network run another way; pre- and post-processing are ours (the same code).
VARIANTS["ours-default-layout"] = {**VARIANTS["ours"], "cpu_channels_last": False}
VARIANTS["onnxruntime"] = {**VARIANTS["ours"], "backend": "onnxruntime"}
VARIANTS["ours-compiled"] = {**VARIANTS["ours"], "compile": "default"}
VARIANTS["ours-cuda-graphs"] = {**VARIANTS["ours"], "compile": "reduce-overhead"}
VARIANTS["ours-graphed"] = {**VARIANTS["ours"], "cuda_graphs": True}
STAGES = ["backbone", "pixel_decoder", "transformer_decoder"]

HF_VARIANTS = ("transformers", "ours-from-hf")
# Why a variant cannot run with a --device, --precision or --batch-size other than the default.
NOT_ON_CUDA = {
    "ours-default-malloc": "glibc's allocator setting is a CPU matter",
    "ours-default-layout": "the channels-last backbone is a CPU matter",
    "onnxruntime": "the ONNX Runtime backend runs on the CPU",
    "transformers": "the Hugging Face comparison runs on the CPU",
    "ours-from-hf": "the Hugging Face comparison runs on the CPU",
}
CUDA_ONLY = {
    "ours-cuda-graphs": "CUDA graphs need a GPU",
    "ours-graphed": "CUDA graphs need a GPU",
}
FP32_ONLY = {
    "onnxruntime": "the ONNX Runtime backend runs the exported fp32 model",
    "transformers": "the Hugging Face comparison runs in fp32",
    "ours-from-hf": "the Hugging Face comparison runs in fp32",
}
ONE_IMAGE_ONLY = {
    "transformers": "the Hugging Face comparison times one image",
    "ours-from-hf": "the Hugging Face comparison times one image",
}


def why_not(name: str, device: str, precision: str, batch_size: int) -> Optional[str]:
    """Why variant ``name`` cannot run with these settings (None: it can)."""
    if device == "cuda" and name in NOT_ON_CUDA:
        return f"--device cuda: {NOT_ON_CUDA[name]}"
    if device != "cuda" and name in CUDA_ONLY:
        return f"--device {device}: {CUDA_ONLY[name]}"
    if precision != "fp32" and name in FP32_ONLY:
        return f"--precision {precision}: {FP32_ONLY[name]}"
    if batch_size != 1 and name in ONE_IMAGE_ONLY:
        return f"--batch-size {batch_size}: {ONE_IMAGE_ONLY[name]}"
    return None


def variant_settings(name: str, device: torch.device) -> Dict:
    """What variant ``name`` changes, on ``device``. On a GPU the allocator setting does not
    apply, and "official-style" keeps our CUDA kernel: the official release runs its own CUDA
    kernel there, not the PyTorch deformable attention."""
    variant = dict(VARIANTS[name])
    if device.type == "cuda":
        variant["keep_memory"] = False
        variant["reference_op"] = False
    return variant


def onnxruntime_model(model, cfg: CfgNode, folder: str, threads: Optional[int]):
    """``model`` exported to ONNX (not timed) and opened in ONNX Runtime (CPU)."""
    from mask2former.export import OnnxModelFile, export

    path = os.path.join(folder, "model.onnx")
    start = time.perf_counter()
    export(model, cfg, path)
    print(f"exported to ONNX in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return OnnxModelFile(path, threads=threads).build_model(cfg)


def run_variant(name: str, args) -> Dict:
    """Time one variant in this process (the allocator setting cannot be undone)."""
    device = torch.device(args.device)
    variant = variant_settings(name, device)
    if variant["keep_memory"]:
        if not keep_freed_memory():
            raise SystemExit(
                "The allocator could not be tuned here (see the log); the 'ours' figures "
                "would be those of 'ours-default-malloc'."
            )
    if variant["reference_op"]:
        # ms_deform_attn looks its implementation up in the module at every call
        ms_deform_attn_functional.implementation_for = lambda *_: (
            ms_deform_attn_functional.REFERENCE
        )
    aux_outputs = ["MODEL.MASK_FORMER.TEST.AUX_OUTPUTS_IN_EVAL", str(variant["full_size_aux"])]
    model = build_benchmark_model(args.config_file, [*aux_outputs, *args.opts], args.device)
    model.cpu_channels_last = model.cpu_channels_last and variant["cpu_channels_last"]
    # the model whose forwards are timed; post-processing is timed on `model` (same code)
    timed, stages = model, True
    with tempfile.TemporaryDirectory() as folder:
        if variant.get("backend") == "onnxruntime":
            cfg = benchmark_config(args.config_file, [*aux_outputs, *args.opts])
            timed, stages = onnxruntime_model(model, cfg, folder, args.threads), False
        if variant.get("compile"):
            # compiled once, at the warm-up forward (not timed); stage hooks would break it
            model.network = torch.compile(model.network, mode=variant["compile"])
            stages = False
        if variant.get("cuda_graphs"):
            # captured at the warm-up forward; replays run no module, so no stage hooks
            model.use_cuda_graphs(PRECISIONS[args.precision])
            stages = False
        # already on the device, as the Predictor hands it over; N copies in one forward
        image = benchmark_image(args.image_size).to(device)
        inputs = [
            {"image": image, "height": args.output_size[0], "width": args.output_size[1]}
        ] * args.batch_size
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        runs, warmup_s, network_output = time_forwards(
            timed, inputs, args.repeats, stages, device=device, precision=args.precision
        )
        peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    medians = {
        stage: statistics.median(run[stage] for run in runs)
        for stage in STAGES + ["network"]
        if stage in runs[0]
    }
    padded = tuple(model.preprocess_image(inputs).tensor.shape[-2:])
    postprocessing = time_postprocessing(
        model,
        padded,
        tuple(args.image_size),
        tuple(args.output_size),
        args.repeats,
        official=variant["official_post"],
    )
    # the batch: one forward of N images, then N post-processings
    end_to_end = medians["network"] + args.batch_size * postprocessing["wall_s"]
    report = {
        "variant": name,
        **variant,
        "padded_size": list(padded),
        "forward_runs_s": runs,
        "warmup_forward_s": warmup_s,
        "network_output": network_output,
        "stages_median_s": medians,
        "postprocessing_realistic": postprocessing,
        "end_to_end_s": end_to_end,
        "network_per_image_s": medians["network"] / args.batch_size,
        "end_to_end_per_image_s": end_to_end / args.batch_size,
        "images_per_s": args.batch_size / end_to_end,
    }
    if peak_memory is not None:
        report["forward_peak_memory_mib"] = peak_memory / 2**20
    return report


# ----- transformers vs ours on a Hub-format model (variants "transformers", "ours-from-hf") --


def write_hub_swin_tiny_coco_panoptic(folder: str) -> None:
    """A random Swin-T COCO-panoptic model in the Hub's format (config.json + safetensors)."""
    import transformers
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    swin = transformers.SwinConfig(
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        drop_path_rate=0.3,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.Mask2FormerConfig(
        backbone_config=swin,
        id2label={index: c["name"] for index, c in enumerate(COCO_CATEGORIES)},
        label2id={c["name"]: index for index, c in enumerate(COCO_CATEGORIES)},
    )
    config.label_ids_to_fuse = [i for i, c in enumerate(COCO_CATEGORIES) if not c["isthing"]]
    torch.manual_seed(0)
    transformers.Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    transformers.Mask2FormerImageProcessor(
        size={"shortest_edge": 800, "longest_edge": 1333}
    ).save_pretrained(folder)


class _HFOutputs:
    """What transformers' post-processing reads from a model output."""

    def __init__(self, class_logits, mask_logits):
        self.class_queries_logits = class_logits[None]
        self.masks_queries_logits = mask_logits[None]


def _median_seconds(function: Callable, repeats: int) -> Dict[str, float]:
    """Median wall and CPU seconds of ``repeats`` calls, after one warm-up call."""
    wall, cpu = [], []
    for run in range(repeats + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        if run > 0:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}


def run_hf_variant(name: str, args) -> Dict:
    """Time one Hub-model variant in this process (see the module docstring)."""
    import transformers

    from mask2former import Predictor

    generator = torch.Generator().manual_seed(0)
    height, width = args.output_size
    image = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    image = image.numpy()
    with open(os.path.join(args.hf_folder, "config.json")) as f:
        hub_config = json.load(f)
    stuff = set(hub_config["label_ids_to_fuse"])
    thresholds = {"threshold": 0.8, "overlap_mask_area_threshold": 0.8}
    if name == "transformers":
        model = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(args.hf_folder)
        model.eval()
        processor = transformers.Mask2FormerImageProcessor.from_pretrained(args.hf_folder)

        def pipeline():
            with torch.no_grad():
                inputs = processor(images=[image], return_tensors="pt")
                outputs = model(pixel_values=inputs["pixel_values"])
            return processor.post_process_panoptic_segmentation(
                outputs, label_ids_to_fuse=stuff, target_sizes=[(height, width)], **thresholds
            )

        def postprocess(class_logits, mask_logits):
            return processor.post_process_panoptic_segmentation(
                _HFOutputs(class_logits, mask_logits),
                label_ids_to_fuse=stuff,
                target_sizes=[(height, width)],
                **thresholds,
            )

        padded = tuple(processor(images=[image], return_tensors="pt")["pixel_values"].shape[-2:])
    else:
        predictor = Predictor.from_hf(
            args.hf_folder, device="cpu", tasks=["panoptic"], tune_cpu_allocator=True
        )
        resized = predictor.resize.get_transform(image).apply_image(image)
        resized_size = tuple(resized.shape[:2])
        padded = tuple(
            predictor.model.preprocess_image(
                [{"image": torch.zeros(3, *resized_size)}]
            ).tensor.shape[-2:]
        )

        def pipeline():
            return predictor(image)

        def postprocess(class_logits, mask_logits):
            with torch.no_grad():
                return predictor.model.inference_single_image(
                    class_logits, mask_logits, padded, resized_size, (height, width)
                )

    class_logits, mask_logits = synthetic_predictions(
        hub_config["num_queries"], len(hub_config["id2label"]), (padded[0] // 4, padded[1] // 4)
    )
    whole = _median_seconds(pipeline, args.repeats)
    realistic = _median_seconds(lambda: postprocess(class_logits, mask_logits), args.repeats)
    return {
        "variant": name,
        "network_input_size": list(padded),
        "image_random_weights": whole,
        "postprocessing_realistic": realistic,
        "end_to_end_s": whole["wall_s"] + realistic["wall_s"],
    }


def print_hf_table(reports: Dict[str, Dict]) -> None:
    names = [name for name in HF_VARIANTS if name in reports]
    print("\nHub-format Swin-T COCO panoptic, seconds" + "".join(f"{n:>16}" for n in names))
    rows = [
        ("image, random weights", lambda r: r["image_random_weights"]["wall_s"]),
        ("post-processing, realistic", lambda r: r["postprocessing_realistic"]["wall_s"]),
        ("end to end", lambda r: r["end_to_end_s"]),
    ]
    for label, value in rows:
        print(f"{label:<40}" + "".join(f"{value(reports[n]):>16.3f}" for n in names))
    if len(names) == 2:
        ratio = reports["transformers"]["end_to_end_s"] / reports["ours-from-hf"]["end_to_end_s"]
        print(f"ours-from-hf is {ratio:.2f}x faster than transformers")


def benchmark_image(image_size) -> torch.Tensor:
    """The (3, H, W) float32 image the tools time and profile: random 0..255 values, the same
    on every run (shared with tools/count_host_syncs.py and tools/profile_inference.py)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, *image_size), generator=generator).float()


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Stop with a usage error when ``device`` is "cuda" and CUDA is not available."""
    if device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device cuda: CUDA is not available here (torch {torch.__version__}, built "
            f"with CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s) visible). "
            "Run on a machine with a GPU, or use --device cpu."
        )


def write_report(report: Dict, json_out: Optional[str]) -> None:
    """Print ``report`` as JSON and, when ``json_out`` is given, write it there too."""
    print(json.dumps(report, indent=2))
    if json_out:
        os.makedirs(os.path.dirname(json_out) or ".", exist_ok=True)
        with open(json_out, "w") as f:
            json.dump(report, f, indent=2)


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --precision: where and in which autocast the model runs (shared with
    tools/count_host_syncs.py and tools/profile_inference.py)."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="fp32",
        help="autocast dtype of the forwards, as Predictor(precision=...) (default: fp32)",
    )


def run_description(args) -> Dict:
    """What every report of these tools records of :func:`add_model_arguments` and
    :func:`add_device_arguments`: the config, input and output sizes, device, precision and
    torch version."""
    return {
        "config": args.config_file,
        "image_size": list(args.image_size),
        "output_size": list(args.output_size),
        "device": args.device,
        "precision": args.precision,
        "torch_version": torch.__version__,
    }


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--config-file, --image-size and --output-size: the model and the input it is timed on
    (shared with tools/count_host_syncs.py and tools/profile_inference.py)."""
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--image-size", type=int, nargs=2, default=(800, 1199), metavar=("H", "W"))
    parser.add_argument(
        "--output-size",
        type=int,
        nargs=2,
        default=(427, 640),
        metavar=("H", "W"),
        help="original image size the results are returned at (a typical COCO image)",
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--json-out", default=None, help="also write the JSON report here")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS) + list(HF_VARIANTS),
        default=None,
        help="what to time, each in its own process (default: all that run with the device, "
        "precision and batch size asked for)",
    )
    add_device_arguments(parser)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="copies of the image in one forward; times are also given per image (default: 1)",
    )
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hf-folder", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    check_settings(parser, args)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.in_process:  # a child: one variant, JSON to --json-out
        (name,) = args.variants
        report = run_hf_variant(name, args) if name in HF_VARIANTS else run_variant(name, args)
        with open(args.json_out, "w") as f:
            json.dump(report, f)
        return

    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        hf_folder = os.path.join(tmp, "mask2former-swin-tiny-coco-panoptic")
        if set(HF_VARIANTS) & set(args.variants):
            write_hub_swin_tiny_coco_panoptic(hf_folder)
        for name in args.variants:
            print(f"timing {name} ...", file=sys.stderr, flush=True)
            path = os.path.join(tmp, f"{name}.json")
            command = [sys.executable, os.path.abspath(__file__), "--in-process"]
            command += ["--variants", name, "--json-out", path]
            command += ["--config-file", args.config_file, "--repeats", str(args.repeats)]
            command += ["--image-size", *map(str, args.image_size)]
            command += ["--output-size", *map(str, args.output_size)]
            command += ["--device", args.device, "--precision", args.precision]
            command += ["--batch-size", str(args.batch_size)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            if name in HF_VARIANTS:
                command += ["--hf-folder", hf_folder]
            status = subprocess.run(command + list(args.opts)).returncode
            if status != 0:
                sys.exit(f"timing {name} failed (exit status {status}): its error is above.")
            with open(path) as f:
                reports[name] = json.load(f)

    report = {
        **run_description(args),
        "threads": args.threads or torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        **cuda_description(args.device),
        "variants": reports,
    }
    if "ours" in reports and "official-style" in reports:
        report["speed_up_vs_official_style"] = (
            reports["official-style"]["end_to_end_s"] / reports["ours"]["end_to_end_s"]
        )
    if set(HF_VARIANTS) <= set(reports):
        report["ours_from_hf_speed_up_vs_transformers"] = (
            reports["transformers"]["end_to_end_s"] / reports["ours-from-hf"]["end_to_end_s"]
        )
    write_report(report, args.json_out)
    detectron2_reports = {name: r for name, r in reports.items() if name not in HF_VARIANTS}
    if detectron2_reports:
        print_table(detectron2_reports, report)
    if set(HF_VARIANTS) & set(reports):
        print_hf_table(reports)


def check_settings(parser: argparse.ArgumentParser, args) -> None:
    """Stop with a usage error (no traceback) when the settings cannot run here; fill in the
    default variants: all that run with them."""
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}.")
    try:
        cfg = load_config(args.config_file, args.opts)
    except (FileNotFoundError, UnknownConfigKeyError) as error:
        parser.error(str(error))
    if is_video_config(cfg):
        parser.error(
            f"{args.config_file} is a video model (MODEL.META_ARCHITECTURE "
            f"{cfg.MODEL.META_ARCHITECTURE!r}): this benchmark times image models only. Give an "
            "image config with --config-file."
        )
    check_device(parser, args.device)
    if args.variants is None:
        args.variants = [
            name
            for name in [*VARIANTS, *HF_VARIANTS]
            if why_not(name, args.device, args.precision, args.batch_size) is None
        ]
        return
    refused = {
        name: why_not(name, args.device, args.precision, args.batch_size) for name in args.variants
    }
    refused = {name: reason for name, reason in refused.items() if reason}
    if refused:
        parser.error(
            "cannot time "
            + "; ".join(f"{name} with {reason}" for name, reason in refused.items())
            + ". Leave them out of --variants."
        )


def cuda_description(device: str) -> Dict:
    """The GPU and the settings that change its float32 results, for the report (nothing on
    the CPU)."""
    if device != "cuda":
        return {}
    return {
        "gpu_name": torch.cuda.get_device_name(),
        "cuda_version": torch.version.cuda,
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
    }


def print_table(reports: Dict[str, Dict], report: Dict) -> None:
    names = list(reports)
    rows = [
        (stage, [reports[n]["stages_median_s"].get(stage) for n in names])
        for stage in STAGES + ["network"]
    ]
    rows.append(
        ("post-processing", [reports[n]["postprocessing_realistic"]["wall_s"] for n in names])
    )
    rows.append(("end to end", [reports[n]["end_to_end_s"] for n in names]))
    batch_size = report["batch_size"]
    if batch_size > 1:
        rows.append(("per image", [reports[n]["end_to_end_per_image_s"] for n in names]))
    # a GPU's times are milliseconds: three decimals of a second would hide them
    unit, scale = ("ms", 1000.0) if report["device"] == "cuda" else ("seconds", 1.0)
    if report["device"] != "cpu" or report["precision"] != "fp32" or batch_size > 1:
        where = report.get("gpu_name", report["device"])
        print(f"\n{where}, {report['precision']}, batch {batch_size}")
    print(f"\n{unit}" + "".join(f"{n:>22}" for n in names))
    for stage, values in rows:
        print(
            f"{stage:<20}"
            + "".join(f"{'-':>22}" if v is None else f"{v * scale:>22.3f}" for v in values)
        )
    if batch_size > 1:
        print(f"{'images/s':<20}" + "".join(f"{reports[n]['images_per_s']:>22.2f}" for n in names))
    if "ours" in reports:
        base = reports["ours"]["end_to_end_s"]
        print(
            f"{'vs ours':<20}"
            + "".join(f"{reports[n]['end_to_end_s'] / base:>21.2f}x" for n in names)
        )
        differences = reports["ours"]["postprocessing_realistic"][
            "differences_from_straightforward"
        ]
        print(f"\nours vs straightforward post-processing on realistic predictions: {differences}")


if __name__ == "__main__":
    main()
