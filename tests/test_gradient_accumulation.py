"""Gradient accumulation (SOLVER.GRADIENT_ACCUMULATION_STEPS): K batches per optimizer step
train as one batch of K times the images would, and as K times as many processes would.

The comparisons run the real Mask2Former losses on a shrunk shapes model. The losses sample
points at random (the matcher's points, the criterion's points); for the comparisons
``torch.rand`` is replaced by values that depend only on the last two dimensions of the shape
asked for, so that every image and every mask gets the same points whichever batch it is in.
The criterion samples its points uniformly (IMPORTANCE_SAMPLE_RATIO 0), so which points a mask
gets does not depend on float rounding of its logits either.
"""

import contextlib
import copy
import logging
import math
import os
import tempfile
from unittest import mock

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage
from helpers import TINY_TRAINING
from torch import nn

import mask2former.data  # noqa: F401  only registration
from mask2former import modeling as _modeling  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.engine import MaskFormerTrainer, accumulation_steps
from mask2former.engine.train_loops import (
    CheckedAMPTrainer,
    CheckedSimpleTrainer,
    NonFiniteLossError,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PANOPTIC = os.path.join(REPO, "configs", "shapes", "maskformer2_R18_panoptic.yaml")
SIZE = 64

pytestmark = pytest.mark.usefixtures("one_thread")


def _point_rand(*size, generator=None, dtype=None, device=None, **kwargs):
    """A stand-in for ``torch.rand``: values in [0, 1) that depend only on the last two
    dimensions of ``size`` (the same for every row before them)."""
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = tuple(size[0])
    tail = size[-2:]
    steps = torch.arange(math.prod(tail), dtype=torch.float64)
    values = (steps * 0.6180339887498949 + 0.1).frac().reshape(tail)
    return values.to(dtype=dtype or torch.float32, device=device).expand(size).clone()


def _cfg(*opts):
    return load_config(
        PANOPTIC,
        [
            *TINY_TRAINING,
            # batch norm in training mode sees each batch's statistics: frozen, as in the
            # official configs, so that a batch's images are independent of each other
            "MODEL.RESNETS.NORM", "FrozenBN",
            "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64",
            "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO", "0.0",
            *opts,
        ],
    )  # fmt: skip


def _model(*opts):
    torch.manual_seed(0)
    model = build_model(_cfg(*opts))
    model.train()
    return model


def _image(seed, num_instances):
    """A 64 x 64 training input with ``num_instances`` rectangles of classes 0, 1, 2, ..."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(num_instances, SIZE, SIZE, dtype=torch.bool)
    for index in range(num_instances):
        top, left = torch.randint(0, SIZE // 2, (2,), generator=generator).tolist()
        height, width = torch.randint(8, SIZE // 2, (2,), generator=generator).tolist()
        masks[index, top : top + height, left : left + width] = True
    instances = Instances(
        (SIZE, SIZE),
        gt_classes=torch.arange(num_instances, dtype=torch.int64),
        gt_masks=BitMasks(masks),
    )
    image = torch.randint(0, 256, (3, SIZE, SIZE), generator=generator).float()
    return {"image": image, "instances": instances}


def _gradients_after_one_step(loop):
    with EventStorage(0) as storage:
        loop.storage = storage
        loop.iter = 0
        loop.run_step()
        # (only the main process writes the metrics)
        total_loss = storage.latest().get("total_loss", (None,))[0]
    grads = {
        name: p.grad.clone() for name, p in loop.model.named_parameters() if p.grad is not None
    }
    return grads, total_loss


class _NoStep(torch.optim.SGD):
    """SGD whose step leaves the weights alone, to compare the gradients a step leaves."""

    def step(self, closure=None):
        return None


def _assert_same_gradients(expected, actual):
    assert expected.keys() == actual.keys()
    for name, grad in expected.items():
        scale = grad.norm()
        assert torch.allclose(actual[name], grad, rtol=0, atol=1e-4 * float(scale) + 1e-9), name


def _loop(model, batches, steps):
    optimizer = _NoStep(model.parameters(), lr=0.1)
    return CheckedSimpleTrainer(model, batches, optimizer, accumulation_steps=steps)


@pytest.mark.parametrize(
    "counts, opts",
    [
        # every image with as many instances: every loss term matches the large batch
        ([2, 2, 2, 2], []),
        # different counts (3 and 2 per batch): the mask losses match because they are
        # normalised over the whole step (the classification loss is a per-batch weighted
        # mean, as on several processes, so it is left out here)
        ([3, 0, 1, 1], ["MODEL.MASK_FORMER.CLASS_WEIGHT", "0.0"]),
    ],
)
def test_two_accumulated_batches_give_the_gradients_of_one_batch_of_all_images(counts, opts):
    images = [_image(seed, count) for seed, count in enumerate(counts)]
    with mock.patch.object(torch, "rand", _point_rand):
        large = _loop(_model(*opts), [images], steps=1)
        expected, expected_loss = _gradients_after_one_step(large)
        accumulated = _loop(_model(*opts), [images[:2], images[2:]], steps=2)
        actual, actual_loss = _gradients_after_one_step(accumulated)
    _assert_same_gradients(expected, actual)
    assert actual_loss == pytest.approx(expected_loss, rel=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_accumulated_batches_give_the_gradients_of_one_batch(no_tf32):
    images = [_image(seed, count) for seed, count in enumerate([2, 2, 2, 2])]
    with mock.patch.object(torch, "rand", _point_rand):
        large = _loop(_model("MODEL.DEVICE", "cuda"), [images], steps=1)
        expected, _ = _gradients_after_one_step(large)
        accumulated = _loop(_model("MODEL.DEVICE", "cuda"), [images[:2], images[2:]], steps=2)
        actual, _ = _gradients_after_one_step(accumulated)
    _assert_same_gradients(expected, actual)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_on_cuda_amp_accumulation_trains(precision, tmp_path):
    from mask2former.engine import build_optimizer, build_train_loop

    cfg = _cfg(
        "MODEL.DEVICE", "cuda",
        "SOLVER.AMP.ENABLED", "True",
        "SOLVER.AMP.PRECISION", precision,
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.GRADIENT_ACCUMULATION_STEPS", "2",
        "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    images = [_image(seed, 2) for seed in range(4)]
    loop = build_train_loop(cfg, model, [images[:2], images[2:]] * 3, build_optimizer(cfg, model))
    assert isinstance(loop, CheckedAMPTrainer) and loop.accumulation_steps == 2
    storage = _steps(loop, 3)
    assert math.isfinite(storage.history("total_loss").latest())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    moved = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert len(moved) > len(before) // 2


def test_accumulation_without_the_common_normaliser_would_differ():
    """The test above can fail: normalising each batch's mask losses by its own count (what
    each batch would do alone) gives other gradients when the counts differ."""
    images = [_image(seed, count) for seed, count in enumerate([3, 0, 1, 1])]
    opts = ["MODEL.MASK_FORMER.CLASS_WEIGHT", "0.0"]
    with mock.patch.object(torch, "rand", _point_rand):
        expected, _ = _gradients_after_one_step(_loop(_model(*opts), [images], steps=1))
        loop = _loop(_model(*opts), [images[:2], images[2:]], steps=2)
        own_counts = mock.patch.object(
            type(loop), "_loss_normalization", lambda self, batches: contextlib.nullcontext()
        )
        with own_counts:
            actual, _ = _gradients_after_one_step(loop)
    with pytest.raises(AssertionError):
        _assert_same_gradients(expected, actual)


def test_count_targets_is_what_the_criterion_counts():
    model = _model()
    inputs = [_image(0, 3), _image(1, 0), _image(2, 2)]
    images = model.preprocess_image(inputs)
    targets = model.prepare_targets(model.training_instances(inputs), images)
    assert model.count_targets(inputs) == sum(len(t["labels"]) for t in targets) == 5
    with pytest.raises(ValueError, match="'instances'"):
        model.count_targets([{"image": inputs[0]["image"]}])


def test_the_normaliser_is_restored_after_the_step_and_on_errors():
    criterion = _model().criterion
    with criterion.normalized_by(2.5):
        assert criterion.fixed_num_masks == 2.5
    assert criterion.fixed_num_masks is None
    with pytest.raises(RuntimeError), criterion.normalized_by(4.0):
        raise RuntimeError("the forward failed")
    assert criterion.fixed_num_masks is None
    with pytest.raises(ValueError, match="> 0"), criterion.normalized_by(0.0):
        pass


# --- the loops: what is called how often, mixed precision, non-finite losses -----------------


class _LossModel(nn.Module):
    """A linear model whose loss is the mean squared output; records its forward calls."""

    def __init__(self, nan_at_call=None):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 1)
        self.calls = []
        self.nan_at_call = nan_at_call

    def forward(self, batch):
        self.calls.append((len(batch), self.linear(batch).dtype))
        loss = self.linear(batch).float().pow(2).mean()
        if len(self.calls) == self.nan_at_call:
            loss = loss * float("nan")
        return {"loss_x": loss}


def _batches(count, size=4):
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(size, 4, generator=generator) for _ in range(count)]


def _steps(loop, count):
    with EventStorage(0) as storage:
        loop.storage = storage
        for iteration in range(count):
            loop.iter = storage.iter = iteration
            loop.run_step()
    return storage


def test_one_optimizer_step_per_k_batches_with_the_average_loss():
    batches = _batches(4)
    model = _LossModel()
    first_loss = sum(float(model(b)["loss_x"].detach()) for b in batches[:2]) / 2
    model.calls.clear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = CheckedSimpleTrainer(model, batches, optimizer, accumulation_steps=2)
    with mock.patch.object(optimizer, "step", wraps=optimizer.step) as step:
        storage = _steps(loop, 2)
    assert step.call_count == 2 and len(model.calls) == 4
    # the loss written for a step is the mean of its batches' losses (the first step's batches
    # ran on the initial weights)
    values = [value for value, _ in storage.history("total_loss").values()]
    assert len(values) == 2 and values[0] == pytest.approx(first_loss, rel=1e-6)


def test_accumulated_step_equals_the_step_on_the_concatenated_batch():
    batches = _batches(2)
    results = []
    for data, steps in (([torch.cat(batches)], 1), (batches, 2)):
        model = _LossModel()
        loop = CheckedSimpleTrainer(
            model, data, torch.optim.SGD(model.parameters(), lr=0.1), accumulation_steps=steps
        )
        _steps(loop, 1)
        results.append(model.linear.weight.detach().clone())
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)


def test_a_non_finite_loss_in_any_batch_stops_before_the_optimizer_step(tmp_path):
    model = _LossModel(nan_at_call=2)
    before = copy.deepcopy(model.state_dict())
    loop = CheckedSimpleTrainer(
        model,
        _batches(2),
        torch.optim.SGD(model.parameters(), lr=0.1),
        accumulation_steps=2,
        checkpoint_dir=str(tmp_path),
    )
    with pytest.raises(NonFiniteLossError, match="loss_x = nan"):
        _steps(loop, 1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning")  # in Detectron2
def test_amp_float16_scales_every_batch_and_steps_once():
    # The loss scaling runs on a CPU GradScaler (torch's CUDA autocast leaves CPU tensors alone);
    # Detectron2's AMPTrainer asserts that CUDA is there.
    batches = _batches(6)
    weights = []
    for data, steps in (([torch.cat(batches[i : i + 2]) for i in (0, 2, 4)], 1), (batches, 2)):
        model = _LossModel(nan_at_call=3 if steps == 2 else 2)
        loop = CheckedAMPTrainer(
            model,
            data,
            torch.optim.SGD(model.parameters(), lr=0.1),
            grad_scaler=torch.amp.GradScaler("cpu", init_scale=1024.0),
            precision=torch.float16,
            accumulation_steps=steps,
        )
        with mock.patch.object(torch.cuda, "is_available", return_value=True):
            storage = _steps(loop, 3)
        # the step whose batch had a NaN is skipped by the scaler and counted
        assert loop.skipped_steps == 1
        assert storage.history("[metric]amp_skipped_steps").latest() == 1
        weights.append(model.linear.weight.detach().clone())
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-6, atol=1e-7)


def test_cpu_autocast_runs_every_forward_in_bfloat16():
    from mask2former.engine.trainer import CPUAutocastTrainer

    model = _LossModel()
    loop = CPUAutocastTrainer(
        model,
        _batches(2),
        torch.optim.SGD(model.parameters(), lr=0.1),
        accumulation_steps=2,
    )
    _steps(loop, 1)
    assert model.calls == [(4, torch.bfloat16), (4, torch.bfloat16)]
    assert not torch.is_autocast_enabled("cpu")
    assert model.linear.weight.dtype == torch.float32


# --- the trainer: configuration and data loader ------------------------------------------------


@pytest.mark.parametrize(
    "ims_per_batch, steps, world_size, message",
    [
        (16, 3, 1, "must be a multiple of 3"),
        (16, 4, 8, "must be a multiple of 32"),
        (16, 0, 1, "integer >= 1"),
    ],
)
def test_settings_that_do_not_split_the_batch_are_refused(
    ims_per_batch, steps, world_size, message
):
    cfg = _cfg("SOLVER.IMS_PER_BATCH", str(ims_per_batch))
    cfg.SOLVER.GRADIENT_ACCUMULATION_STEPS = steps
    with pytest.raises(ValueError, match=message) as error:
        accumulation_steps(cfg, world_size)
    assert "SOLVER.GRADIENT_ACCUMULATION_STEPS" in str(error.value)


def test_valid_settings():
    cfg = _cfg("SOLVER.IMS_PER_BATCH", "16", "SOLVER.GRADIENT_ACCUMULATION_STEPS", "4")
    assert accumulation_steps(cfg, 1) == 4
    assert accumulation_steps(cfg, 2) == 4
    assert accumulation_steps(cfg, 4) == 4


@pytest.mark.slow
def test_trainer_loads_batches_of_the_accumulated_size_and_steps_per_iteration(tmp_path, caplog):
    cfg = _cfg(
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.GRADIENT_ACCUMULATION_STEPS", "2",
        "SOLVER.MAX_ITER", "2",
        "OUTPUT_DIR", str(tmp_path),
        "DATASETS.TEST", "()",
    )  # fmt: skip
    trainer = MaskFormerTrainer(cfg)
    sizes = []
    forward = trainer.model.forward

    def recording_forward(batched_inputs):
        sizes.append(len(batched_inputs))
        return forward(batched_inputs)

    with mock.patch.object(trainer.model, "forward", recording_forward):
        trainer.train()
    assert "batch-norm" not in caplog.text  # FrozenBN
    # 2 iterations of 2 batches of 2 images; the iteration counter counts optimizer steps
    assert sizes == [2, 2, 2, 2]
    assert trainer.iter == 2
    assert (tmp_path / "model_final.pth").is_file()


def test_trainer_warns_that_batch_norm_sees_each_batch(tmp_path, caplog):
    cfg = _cfg(
        "MODEL.RESNETS.NORM", "BN",
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.GRADIENT_ACCUMULATION_STEPS", "2",
        "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="mask2former"):
        MaskFormerTrainer(cfg)
    [warning] = [r.getMessage() for r in caplog.records if "batch-norm" in r.getMessage()]
    assert "each batch of 2 image(s)" in warning and "the 4 images of a step" in warning
    assert "backbone.stem" in warning


@pytest.mark.parametrize(
    "ims_per_batch, steps, world_size, amp, expected",
    [
        (16, 1, 2, True, "Set SOLVER.GRADIENT_ACCUMULATION_STEPS 2 for batches of 4 image(s)"),
        (16, 2, 2, True, "Set SOLVER.GRADIENT_ACCUMULATION_STEPS 4 for batches of 2 image(s)"),
        (12, 2, 2, False, "Set SOLVER.GRADIENT_ACCUMULATION_STEPS 3 for batches of 2 image(s)"),
        (16, 2, 8, True, "already has one image per process: train on smaller images"),
    ],
)
def test_out_of_memory_advice(ims_per_batch, steps, world_size, amp, expected):
    from mask2former.engine.trainer import out_of_memory_message

    cfg = _cfg("SOLVER.IMS_PER_BATCH", str(ims_per_batch), "SOLVER.AMP.ENABLED", str(amp))
    cfg.SOLVER.GRADIENT_ACCUMULATION_STEPS = steps
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nmore")
    message = out_of_memory_message(cfg, world_size, error)
    assert expected in message
    assert "(CUDA out of memory. Tried to allocate 2.00 GiB.)" in message
    per_batch = ims_per_batch // (steps * world_size)
    assert f"batches of {per_batch} image(s) (SOLVER.IMS_PER_BATCH {ims_per_batch}" in message
    assert ("SOLVER.AMP.ENABLED True" in message) == (not amp)


def test_trainer_reports_out_of_memory_with_what_to_change(tmp_path):
    cfg = _cfg(
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.MAX_ITER", "2",
        "OUTPUT_DIR", str(tmp_path),
        "DATASETS.TEST", "()",
    )  # fmt: skip
    trainer = MaskFormerTrainer(cfg)
    original = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
    with mock.patch.object(trainer.model, "forward", side_effect=original):
        with pytest.raises(torch.OutOfMemoryError) as raised:
            trainer.train()
    assert "Set SOLVER.GRADIENT_ACCUMULATION_STEPS 2 for batches of 2 image(s)" in str(raised.value)
    assert raised.value.__cause__ is original


# --- several processes: K batches on N processes train as K x N processes would ---------------


def _distributed_worker(rank, world_size, init_file, batches, steps, output):
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        reductions = []

        def counting_hook(state, bucket):
            reductions.append(bucket.index())
            return default_hooks.allreduce_hook(state, bucket)

        with mock.patch.object(torch, "rand", _point_rand):
            model = DistributedDataParallel(_model(), device_ids=None, broadcast_buffers=False)
            model.register_comm_hook(None, counting_hook)
            grads, _ = _gradients_after_one_step(_loop(model, batches[rank], steps))
        if rank == 0:
            names = {name.removeprefix("module."): grad for name, grad in grads.items()}
            torch.save({"grads": names, "reductions": len(reductions)}, output)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_of_two_batches_train_as_four_batches_in_one_process(tmp_path):
    images = [[_image(seed, count)] for seed, count in enumerate([3, 1, 0, 2])]
    with mock.patch.object(torch, "rand", _point_rand):
        expected, _ = _gradients_after_one_step(_loop(_model(), images, steps=4))
    results = {}
    for steps in (1, 2):
        # process 0 gets images 0 and 2, process 1 images 1 and 3 (one per batch)
        per_rank = [images[0::2], images[1::2]] if steps == 2 else [images[0:1], images[1:2]]
        output = tmp_path / f"steps{steps}.pt"
        for attempt in (1, 2):
            with tempfile.TemporaryDirectory() as init_dir:
                try:
                    torch.multiprocessing.spawn(
                        _distributed_worker,
                        args=(2, os.path.join(init_dir, "init"), per_rank, steps, str(output)),
                        nprocs=2,
                    )
                    break
                # once more when gloo aborted a process (helpers.GLOO_ABORT, an upstream fault)
                except torch.multiprocessing.ProcessExitedException as error:
                    if attempt == 2 or error.signal_name != "SIGABRT":
                        raise
        results[steps] = torch.load(output, weights_only=True)
    _assert_same_gradients(expected, results[2]["grads"])
    # the gradients are all-reduced once per optimizer step: as often as without accumulation
    assert results[2]["reductions"] == results[1]["reductions"] > 0
