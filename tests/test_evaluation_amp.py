"""Evaluation in mixed precision (TEST.AMP): the forwards run under autocast, the results come
through the real evaluators, and the settings it cannot use are named."""

import logging
import math
import os

import pytest
import torch
from detectron2.modeling import build_model
from helpers import ROOT, TINY_TRAINING

import mask2former.data  # noqa: F401  only registration
from mask2former import modeling as _modeling  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.engine import MaskFormerTrainer
from mask2former.engine.trainer import AutocastInference, evaluation_model

SEMANTIC = os.path.join(ROOT, "configs", "shapes", "maskformer2_R18_semantic.yaml")

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(tmp_path, *opts):
    cfg = load_config(SEMANTIC, [*TINY_TRAINING, "OUTPUT_DIR", str(tmp_path), *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    return cfg, model


def _record_autocast(model, device_type="cpu"):
    """Replace ``model.network`` by one that records the autocast state it runs in."""
    seen = []
    network = model.network

    def recording_network(images):
        enabled = torch.is_autocast_enabled(device_type)
        seen.append(torch.get_autocast_dtype(device_type) if enabled else None)
        return network(images)

    model.network = recording_network
    return seen


def test_bfloat16_evaluation_runs_every_forward_under_autocast(tmp_path):
    cfg, model = _model(tmp_path, "TEST.AMP.ENABLED", "True", "TEST.AMP.PRECISION", "bfloat16")
    seen = _record_autocast(model)
    results = MaskFormerTrainer.test(cfg, model)
    assert math.isfinite(results["sem_seg"]["mIoU"])
    assert len(seen) == 50 and set(seen) == {torch.bfloat16}  # the 50 validation images
    assert not torch.is_autocast_enabled("cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_float32_evaluation_by_default(tmp_path):
    cfg, model = _model(tmp_path)
    assert evaluation_model(cfg, model) is model
    seen = _record_autocast(model)
    MaskFormerTrainer.test(cfg, model)
    assert set(seen) == {None}


def test_float16_on_a_cpu_falls_back_to_float32_with_a_warning(tmp_path, caplog):
    cfg, model = _model(tmp_path, "TEST.AMP.ENABLED", "True", "TEST.AMP.PRECISION", "float16")
    with caplog.at_level(logging.WARNING, logger="mask2former"):
        assert evaluation_model(cfg, model) is model
    assert "evaluating in float32" in caplog.text and "TEST.AMP.PRECISION bfloat16" in caplog.text


def test_an_unknown_precision_is_named(tmp_path):
    cfg, model = _model(tmp_path, "TEST.AMP.ENABLED", "True", "TEST.AMP.PRECISION", "half")
    with pytest.raises(ValueError, match="TEST.AMP.PRECISION is 'half'; supported:"):
        evaluation_model(cfg, model)


def test_the_wrapper_follows_the_model_into_eval_mode(tmp_path):
    cfg, model = _model(tmp_path, "TEST.AMP.ENABLED", "True", "TEST.AMP.PRECISION", "bfloat16")
    wrapped = evaluation_model(cfg, model)
    assert isinstance(wrapped, AutocastInference) and wrapped.model is model
    wrapped.eval()
    assert not model.training


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_cuda_evaluation_under_autocast(tmp_path, precision):
    cfg, model = _model(
        tmp_path,
        "MODEL.DEVICE", "cuda",
        "TEST.AMP.ENABLED", "True",
        "TEST.AMP.PRECISION", precision,
    )  # fmt: skip
    seen = _record_autocast(model, "cuda")
    results = MaskFormerTrainer.test(cfg, model)
    assert math.isfinite(results["sem_seg"]["mIoU"])
    assert set(seen) == {getattr(torch, precision)}
