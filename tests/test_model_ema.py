"""MODEL_EMA (mask2former/engine/ema.py): the average's arithmetic, its updates during
training, which model the evaluations evaluate, checkpoints and --resume, and inference
loading the average of a checkpoint."""

import math
import os

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from helpers import TINY_TRAINING, load_script, on_cuda
from torch import nn

import mask2former.data  # noqa: F401  only registration
from mask2former import modeling as _modeling  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.data.datasets.catalog_utils import get_datasets_root
from mask2former.data.synthetic import ensure_synthetic_dataset
from mask2former.engine import AtomicDetectionCheckpointer, MaskFormerTrainer
from mask2former.engine.ema import ModelEMA
from mask2former.predictor import Predictor
from mask2former.utils.weights_io import convert_weights_file, load_weights_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEMANTIC = os.path.join(REPO, "configs", "shapes", "maskformer2_R18_semantic.yaml")

pytestmark = pytest.mark.usefixtures("one_thread")


def _toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def _float_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def test_one_update_moves_the_average_by_one_minus_decay():
    model = _toy()
    start = _float_state(model)
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
    model[1].num_batches_tracked.fill_(5)
    ema.update(model)
    assert ema.updates == 1
    # 0.9 * start + 0.1 * (start + 1)
    torch.testing.assert_close(ema.model[0].weight, start["0.weight"] + 0.1)
    torch.testing.assert_close(ema.model[0].bias, start["0.bias"])  # unchanged weights stay
    torch.testing.assert_close(ema.model[1].running_mean, 0.9 * start["1.running_mean"] + 0.2)
    assert int(ema.model[1].num_batches_tracked) == 5  # a counter is copied
    # a copy: no gradients, eval mode, its own storage
    assert not any(p.requires_grad for p in ema.model.parameters())
    assert not ema.model.training
    assert ema.model[0].weight.data_ptr() != model[0].weight.data_ptr()


@pytest.mark.parametrize(
    "model_device, average_device, kept_on",
    [("cpu", "", "cpu"), on_cuda("cuda", "", "cuda"), on_cuda("cuda", "cpu", "cpu")],
)
def test_the_average_lives_where_model_ema_device_says(model_device, average_device, kept_on):
    model = _toy().to(model_device)
    ema = ModelEMA(model, decay=0.9, device=average_device)
    assert {p.device.type for p in ema.model.state_dict().values()} == {kept_on}
    start = ema.model[0].weight.detach().cpu().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.model[0].weight.cpu(), start + 0.1)


def test_the_warmup_ramps_the_decay_up():
    model = nn.Linear(1, 1, bias=False)
    ema = ModelEMA(model, decay=0.99, warmup_iters=10)
    assert ema.decay_at(1) == pytest.approx(0.99 * (1 - math.exp(-0.1)))
    assert ema.decay_at(10_000) == pytest.approx(0.99)
    with torch.no_grad():
        model.weight.fill_(0.0)
        ema.reset(model)
        model.weight.fill_(1.0)
    ema.update(model)
    assert float(ema.model.weight) == pytest.approx(1 - ema.decay_at(1))
    assert ModelEMA(model, decay=0.99).decay_at(1) == 0.99  # no warm-up


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"decay": 1.0}, r"MODEL_EMA.DECAY is 1.0: it must lie in \[0, 1\)"),
        ({"decay": 0.9, "warmup_iters": -1}, r"MODEL_EMA.WARMUP_ITERS is -1"),
    ],
)
def test_settings_it_cannot_work_with(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelEMA(_toy(), **kwargs)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL_EMA.DECAY", "1.5"], r"MODEL_EMA.DECAY is 1.5"),
        (["MODEL_EMA.DEVICE", "gpu0"], r"MODEL_EMA.DEVICE is 'gpu0', not a device"),
    ],
)
def test_train_net_names_a_bad_setting_before_starting(opts, message):
    train_net = load_script("train_net.py")
    parser = train_net.default_argument_parser()
    args = parser.parse_args(["--config-file", SEMANTIC, "MODEL_EMA.ENABLED", "True", *opts])
    with pytest.raises(ValueError, match=message):
        train_net.check_args(args)


@pytest.fixture(scope="module")
def shapes():
    ensure_synthetic_dataset(os.path.join(get_datasets_root(), "shapes"))


def _cfg(output_dir, *opts):
    cfg = load_config(
        SEMANTIC,
        [
            *TINY_TRAINING,
            "MODEL_EMA.ENABLED", "True", "MODEL_EMA.DECAY", "0.5", "MODEL_EMA.WARMUP_ITERS", "0",
            "OUTPUT_DIR", str(output_dir), *opts,
        ],
    )  # fmt: skip
    cfg.freeze()
    return cfg


class _RecordWeights(HookBase):
    """The model's floating-point weights after every step."""

    def __init__(self):
        self.after_steps = []

    def after_step(self):
        self.after_steps.append(_float_state(self.trainer.model))


def _assert_same_state(model, state):
    for name, value in model.state_dict().items():
        if name in state:
            torch.testing.assert_close(value, state[name], msg=name)


@pytest.mark.slow
def test_training_averages_evaluates_checkpoints_and_infers_with_the_average(
    shapes, tmp_path, monkeypatch
):
    cfg = _cfg(tmp_path, "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "3")
    evaluated = []

    def fake_test(config, model, evaluators=None):  # which model each evaluation gets
        evaluated.append(model)
        return {"sem_seg": {"mIoU": float(len(evaluated))}}

    trainer = MaskFormerTrainer(cfg)
    trainer.resume_or_load(resume=False)
    monkeypatch.setattr(MaskFormerTrainer, "test", staticmethod(fake_test))
    recorder = _RecordWeights()
    trainer.register_hooks([recorder])
    expected = _float_state(trainer.model)
    trainer.train()

    # decay 0.5 from the start: the average of the weights after each of the 3 steps
    assert len(recorder.after_steps) == 3
    for weights in recorder.after_steps:
        expected = {name: 0.5 * expected[name] + 0.5 * weights[name] for name in expected}
    assert trainer.ema.updates == 3
    _assert_same_state(trainer.ema.model, expected)

    # the average is evaluated first, under the usual names; the raw weights under "raw"
    assert evaluated == [trainer.ema.model, trainer.model]
    latest = trainer.storage.latest()
    assert (latest["sem_seg/mIoU"][0], latest["raw/sem_seg/mIoU"][0]) == (1.0, 2.0)

    # the checkpoint holds both
    final = str(tmp_path / "model_final.pth")
    saved = torch.load(final, map_location="cpu", weights_only=True)
    assert saved["ema"]["updates"] == 3
    _assert_same_state(trainer.ema.model, saved["ema"]["model"])
    _assert_same_state(trainer.model, saved["model"])

    # inference takes the average (MODEL_EMA.USE_FOR_INFERENCE), or the raw weights
    model = build_model(cfg)
    AtomicDetectionCheckpointer(model, use_average=True).load(final)
    _assert_same_state(model, expected)
    AtomicDetectionCheckpointer(model).load(final)
    _assert_same_state(model, recorder.after_steps[-1])
    _assert_same_state(Predictor(cfg, weights=final).model, expected)
    raw = cfg.clone()
    raw.defrost()
    raw.MODEL_EMA.USE_FOR_INFERENCE = False
    _assert_same_state(Predictor(raw, weights=final).model, recorder.after_steps[-1])

    # the weights to share: model_final.safetensors and tools/convert-weights.py
    shared = load_weights_file(trainer.save_safetensors())["model"]
    _assert_same_state(trainer.ema.model, shared)
    converted = str(tmp_path / "converted.safetensors")
    count, left_out = convert_weights_file(final, converted)
    assert count == len(trainer.ema.model.state_dict()) and "raw weights (model)" in left_out
    _assert_same_state(trainer.ema.model, load_weights_file(converted)["model"])
    convert_weights_file(final, converted, average=False)
    _assert_same_state(trainer.model, load_weights_file(converted)["model"])


class _Crash(Exception):
    pass


class _CrashAfter(HookBase):
    def after_step(self):
        if self.trainer.iter == 1:
            raise _Crash


@pytest.mark.slow
def test_resume_continues_the_average_and_a_new_run_starts_it(shapes, tmp_path, caplog):
    opts = ("SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2")
    first = MaskFormerTrainer(_cfg(tmp_path, *opts))
    first.resume_or_load(resume=False)
    first.register_hooks([_CrashAfter()])
    with pytest.raises(_Crash):
        first.train()
    checkpoint = tmp_path / "model_0000001.pth"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["ema"]
    assert saved["updates"] == 2

    resumed = MaskFormerTrainer(_cfg(tmp_path, *opts))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2 and resumed.ema.updates == 2
    _assert_same_state(resumed.ema.model, saved["model"])
    resumed.train()
    assert resumed.ema.updates == 4

    # a checkpoint without an average (EMA turned on for the resumed run): it starts there
    plain = tmp_path / "plain"
    plain.mkdir()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    del state["ema"]
    torch.save(state, plain / "model_0000001.pth")
    (plain / "last_checkpoint").write_text("model_0000001.pth")
    again = MaskFormerTrainer(_cfg(plain, *opts))
    again.resume_or_load(resume=True)
    recorder = _RecordWeights()
    again.register_hooks([recorder])
    before = _float_state(again.model)
    again.train()
    assert "holds no moving average of the weights; it starts now, at iteration 2" in caplog.text
    assert again.ema.updates == 2
    expected = before
    for weights in recorder.after_steps:
        expected = {name: 0.5 * expected[name] + 0.5 * weights[name] for name in expected}
    _assert_same_state(again.ema.model, expected)
