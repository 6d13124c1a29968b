"""What several test files share: paths, config overrides that shrink a model, loading a script
as a module, uncompressed RLEs, random pictures and clips, a comparison of JSON results, and
running several gloo processes.

Fixtures (the tiny model's weights) are in conftest.py. The tests import this module as
``helpers``: pytest puts tests/ on ``sys.path`` for the test files there.
"""

import importlib.util
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from PIL import Image

from mask2former.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny shapes model of the predictor, demo, web demo, export and weights tests.
TINY_CONFIG = os.path.join(ROOT, "tests", "configs", "demo_tiny_shapes.yaml")

# Narrow pixel decoder and transformer decoder for the configs/ models: 32 channels, one
# encoder layer, two decoder layers, 8 queries.
NARROW_HEADS = [
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.NORM_NUM_GROUPS", "8",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
]  # fmt: skip

# A few training iterations of a configs/shapes model with NARROW_HEADS on the CPU: batches of
# 2, no warm-up, no evaluation during training, no DataLoader workers, seed 1.
TINY_TRAINING = [
    "MODEL.DEVICE", "cpu",
    *NARROW_HEADS,
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.BASE_LR", "0.001",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.EVAL_PERIOD", "0",
    "SEED", "1",
]  # fmt: skip

# Shrink a model of configs/ while keeping what distinguishes the configs (backbone type and
# depths, windows, number of classes, test outputs).
SHRINK = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.NORM_NUM_GROUPS", "8",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", "2",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.NHEADS", "2",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.DEC_LAYERS", "3",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "5",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64",
    "MODEL.SWIN.EMBED_DIM", "24",  # divisible by every official NUM_HEADS[0] (3, 4, 6)
]  # fmt: skip

# How far a prediction may be from the float32 one on the CPU (Predictor and demo tests):
# float32 elsewhere (CUDA with TF32 off, conftest.no_tf32) within the logit tolerance of the
# export tests; bfloat16 / float16 autocast within the 0.05 on class probabilities of
# test_head's CUDA autocast test, applied to instance scores and to each pixel's class
# distribution (its semantic probabilities normalised over the classes).
PRECISION_TOLERANCE = {"fp32": 1e-4, "bf16": 0.05, "fp16": 0.05}

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def on_cuda(*values):
    """A ``pytest.param`` for a CUDA case of a parametrised test: marked ``cuda`` (what
    ``pytest -m cuda`` runs on a GPU machine) and skipped without a GPU."""
    return pytest.param(*values, marks=[pytest.mark.cuda, needs_cuda])


# cv2.VideoCapture as imported, for reading clips while a test replaces it (a fake webcam).
_VIDEO_CAPTURE = cv2.VideoCapture


def _stand_in_metadata(num_classes):
    """A registered name whose metadata suits a model with `num_classes` classes (the real data
    sets are not on this machine); the first half of the classes are things."""
    name = f"test_configs_stand_in_{num_classes}"
    metadata = MetadataCatalog.get(name)
    if not hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
        things = range(max(1, num_classes // 2))
        metadata.set(
            thing_classes=[f"thing{i}" for i in things],
            stuff_classes=[f"class{i}" for i in range(num_classes)],
            thing_dataset_id_to_contiguous_id={i: i for i in things},
            stuff_dataset_id_to_contiguous_id={i: i for i in range(num_classes)},
        )
    return name


def shrunk_config(path):
    """The config at ``path`` (relative to configs/) with SHRINK applied, its train and test
    data sets a registered stand-in with its number of classes, and BN for SyncBN."""
    cfg = load_config(os.path.join(ROOT, "configs", path), SHRINK)
    stand_in = _stand_in_metadata(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    cfg.DATASETS.TRAIN = (stand_in,)
    cfg.DATASETS.TEST = (stand_in,)
    if cfg.MODEL.RESNETS.NORM == "SyncBN":
        cfg.MODEL.RESNETS.NORM = "BN"  # SyncBN needs a process group with GPUs
    return cfg


def load_script(relative_path):
    """The script at ``relative_path`` (from the repository root, e.g. "demo/demo.py") loaded
    as a module, without running its ``__main__`` block."""
    name = os.path.splitext(os.path.basename(relative_path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def uncompressed_rle(mask):
    """COCO's uncompressed RLE of a (H, W) mask: "counts" a list of column-major run lengths,
    starting with a run of zeros (written here, independently of pycocotools)."""
    flat = np.asarray(mask).flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(np.asarray(mask).shape), "counts": counts}


def random_picture(height, width, seed=0):
    """A (height, width, 3) uint8 array of uniform noise."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_random_png(path, height, width, seed=0):
    """Write a random_picture to the PNG file ``path``; returns the path as a string."""
    Image.fromarray(random_picture(height, width, seed)).save(path)
    return str(path)


def write_clip(path, frames, *, fps=7.0, size=(56, 40), seed=0, still=False):
    """Write an MPEG-4 clip of ``frames`` noise frames of ``size`` (width, height) to ``path``;
    returns the path as a string. ``still``: the same noise frame every time."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    rng = np.random.default_rng(seed)
    frame = None
    for _ in range(frames):
        if frame is None or not still:
            frame = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        writer.write(frame)
    writer.release()
    return str(path)


def read_video(path):
    """The frame rate and the shape of every frame of a video file."""
    capture = _VIDEO_CAPTURE(str(path))
    fps, shapes = capture.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        shapes.append(frame.shape)
    capture.release()
    return fps, shapes


def assert_same_json(expected, actual, where="", *, rel=None, abs=None):
    """Equal JSON values: the same keys, lengths and values, except floats, which compare
    with ``pytest.approx(expected, rel=rel, abs=abs)``. ``where`` names the value in messages."""
    if isinstance(expected, dict):
        assert sorted(expected) == sorted(actual), where
        for key in expected:
            assert_same_json(expected[key], actual[key], f"{where}.{key}", rel=rel, abs=abs)
    elif isinstance(expected, list):
        assert len(expected) == len(actual), where
        for index, (first, second) in enumerate(zip(expected, actual)):
            assert_same_json(first, second, f"{where}[{index}]", rel=rel, abs=abs)
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=rel, abs=abs), where
    else:
        assert expected == actual, where


def run_python(code, *, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, in the repository root, with ``env`` (default: this
    process's); its completed process (text output), once it has exited with status 0."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return result


# What a process prints when gloo's TCP transport aborts it (SIGABRT) while it connects to its
# peer, an upstream fault (pytorch/pytorch#188266, open: SIGABRT inside
# gloo::transport::tcp::Address::fromPeerName). It struck the 2-process tests here twice in
# about ten full runs on 2026-11-30, a few seconds after start, and never twice in a row.
GLOO_ABORT = "terminate called without an active exception"


def run_gloo_processes(command, output_dir, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True, **kwargs)`` of a multi-process
    (gloo) run writing to ``output_dir``, run once more, in an emptied ``output_dir``, when gloo
    aborted a process (``GLOO_ABORT``); any other failure is returned as it is."""
    run = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if run.returncode != 0 and GLOO_ABORT in run.stderr:
        print(f"gloo aborted a process ({GLOO_ABORT!r}); running again", file=sys.stderr)
        shutil.rmtree(output_dir)
        os.makedirs(output_dir)
        run = subprocess.run(command, capture_output=True, text=True, **kwargs)
    return run
