"""SOLVER.BEST_CHECKPOINTER (mask2former/engine/hooks.py): model_best.pth from the evaluations
during training, its state across --resume, and the errors for settings it cannot work with."""

import json
import os

import pytest
import torch
from detectron2.engine import HookBase
from helpers import TINY_TRAINING

import mask2former.data  # noqa: F401  only registration
from mask2former import modeling as _modeling  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.data.datasets.catalog_utils import get_datasets_root
from mask2former.data.synthetic import ensure_synthetic_dataset
from mask2former.engine import MaskFormerTrainer
from mask2former.engine.hooks import BestCheckpointHook, best_checkpoint_metric

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = os.path.join(REPO, "configs", "shapes")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes():
    ensure_synthetic_dataset(os.path.join(get_datasets_root(), "shapes"))


def _cfg(name, *opts):
    return load_config(os.path.join(SHAPES, name), [*TINY_TRAINING, *opts])


def test_default_metric_is_the_headline_of_the_first_test_set():
    on = ["SOLVER.BEST_CHECKPOINTER.ENABLED", "True", "TEST.EVAL_PERIOD", "2"]
    assert best_checkpoint_metric(_cfg("maskformer2_R18_panoptic.yaml", *on)) == "panoptic_seg/PQ"
    assert best_checkpoint_metric(_cfg("maskformer2_R18_instance.yaml", *on)) == "segm/AP"
    assert best_checkpoint_metric(_cfg("maskformer2_R18_semantic.yaml", *on)) == "sem_seg/mIoU"
    # panoptic off: mask AP
    cfg = _cfg("maskformer2_R18_panoptic.yaml", *on, "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "False")
    assert best_checkpoint_metric(cfg) == "segm/AP"
    # several test sets: the results are keyed by data set
    two = _cfg(
        "maskformer2_R18_semantic.yaml",
        *on,
        "DATASETS.TEST",
        "('shapes_val_sem_seg', 'shapes_train_sem_seg')",
    )
    assert best_checkpoint_metric(two) == "shapes_val_sem_seg/sem_seg/mIoU"
    chosen = _cfg(
        "maskformer2_R18_semantic.yaml", *on, "SOLVER.BEST_CHECKPOINTER.METRIC", "sem_seg/fwIoU"
    )
    assert best_checkpoint_metric(chosen) == "sem_seg/fwIoU"


@pytest.mark.parametrize(
    "opts, message",
    [
        (["TEST.EVAL_PERIOD", "0"], r"needs evaluations during training: set TEST.EVAL_PERIOD > 0"),
        (["SOLVER.BEST_CHECKPOINTER.MODE", "best"], r"MODE must be 'max' or 'min', got 'best'"),
        (["DATASETS.TEST", "()"], r"needs a test data set \(DATASETS.TEST\)"),
    ],
)
def test_settings_it_cannot_work_with(opts, message, shapes, tmp_path):
    cfg = _cfg(
        "maskformer2_R18_semantic.yaml",
        "SOLVER.BEST_CHECKPOINTER.ENABLED", "True", "TEST.EVAL_PERIOD", "2", *opts,
        "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    with pytest.raises(ValueError, match=message):
        best_checkpoint_metric(cfg)
    with pytest.raises(ValueError, match=message):
        MaskFormerTrainer(cfg)  # before building anything


class _Crash(Exception):
    pass


class _CrashAfter(HookBase):
    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise _Crash


def _train(output_dir, max_iter, *opts, resume=False, crash_after=None):
    cfg = _cfg(
        "maskformer2_R18_semantic.yaml",
        "SOLVER.BEST_CHECKPOINTER.ENABLED", "True", "TEST.EVAL_PERIOD", "2",
        "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", str(output_dir), *opts,
    )  # fmt: skip
    cfg.freeze()
    trainer = MaskFormerTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    hook = next(h for h in trainer._hooks if isinstance(h, BestCheckpointHook))
    if crash_after is None:
        trainer.train()
    else:
        trainer.register_hooks([_CrashAfter(crash_after)])
        with pytest.raises(_Crash):
            trainer.train()
    history = trainer.storage.history("sem_seg/mIoU").values()  # [(value, iteration)]
    return trainer, hook, history


def _state(output_dir):
    return json.loads((output_dir / "model_best.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["max", "min"])
def test_best_of_the_evaluations_is_kept(shapes, tmp_path, mode):
    _, _, history = _train(tmp_path, 6, "SOLVER.BEST_CHECKPOINTER.MODE", mode)
    # every 2 iterations, and at the end (Detectron2 records that one at MAX_ITER)
    assert [iteration for _, iteration in history] == [1, 3, 6]
    assert len({value for value, _ in history}) >= 2  # the choice means something
    pick = max if mode == "max" else min  # the first of equal values: only better replaces
    value, iteration = pick(history, key=lambda entry: entry[0])
    state = _state(tmp_path)
    assert state == {"metric": "sem_seg/mIoU", "mode": mode, "value": value, "iteration": iteration}
    saved = torch.load(tmp_path / "model_best.pth", map_location="cpu", weights_only=True)
    assert saved["iteration"] == iteration
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


@pytest.mark.slow
def test_resume_keeps_the_best_so_far(shapes, tmp_path):
    # evaluations at 1 and 3, checkpoints at 1 and 3 (the last one --resume loads, not
    # model_best.pth), a crash after 4
    _train(tmp_path, 8, "SOLVER.CHECKPOINT_PERIOD", "2", crash_after=4)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    # as if an earlier evaluation had been far better
    better = {"metric": "sem_seg/mIoU", "mode": "max", "value": 1000.0, "iteration": 1}
    (tmp_path / "model_best.json").write_text(json.dumps(better))
    best_weights = (tmp_path / "model_best.pth").read_bytes()
    trainer, hook, history = _train(tmp_path, 8, "SOLVER.CHECKPOINT_PERIOD", "2", resume=True)
    assert trainer.start_iter == 4 and [it for _, it in history] == [5, 8]
    assert (hook.best_metric, hook.best_iter) == (1000.0, 1)
    assert _state(tmp_path) == better
    assert (tmp_path / "model_best.pth").read_bytes() == best_weights

    # a new run (no --resume) in the same folder starts its own best
    _, _, history = _train(tmp_path, 2)
    value, iteration = history[0]
    assert _state(tmp_path)["value"] == value and _state(tmp_path)["iteration"] == iteration == 2


@pytest.mark.slow
def test_a_metric_the_evaluations_lack_stops_at_the_first(shapes, tmp_path):
    with pytest.raises(ValueError) as error:
        _train(tmp_path, 6, "SOLVER.BEST_CHECKPOINTER.METRIC", "sem_seg/mIOU")
    message = str(error.value)
    assert (
        "METRIC 'sem_seg/mIOU' is not among the metrics of the evaluation at iteration 1" in message
    )
    assert "sem_seg/mIoU" in message and "sem_seg/fwIoU" in message
    assert "IoU-circle" not in message  # per-class names left out
    assert str(tmp_path / "model_0000001.pth") in message and "--resume" in message
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_best.pth").exists()
