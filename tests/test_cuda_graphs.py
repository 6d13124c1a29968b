"""CUDA-graph inference (issue 9): mask2former.utils.cuda_graphs.GraphedNetwork, the model's
and the Predictor's use of it, and how the model is prepared for it (autocast weights stored
in their dtype, frozen batch norms folded).

Without a GPU: the caching, precision and aliasing rules run with a stand-in backend whose
"replay" reruns the captured forward into the captured output tensors (what a graph's kernels
do); and the network's forward runs on fake CUDA tensors to check that it does nothing a
capture cannot hold (host synchronisations, copies from the host). The `cuda` cases replay
real graphs on a GPU."""

import copy
import logging

import numpy as np
import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from helpers import PRECISION_TOLERANCE, TINY_CONFIG, on_cuda, random_picture, shrunk_config
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mask2former.config import load_config
from mask2former.modeling.autocast_weights import (
    autocast_weights,
    store_weights_in_autocast_dtype,
)
from mask2former.modeling.batchnorm_folding import fold_frozen_batchnorm
from mask2former.predictor import Predictor
from mask2former.utils.cuda_graphs import GraphedNetwork, autocast_state
from mask2former.utils.host_syncs import HostSyncRecorder

R50 = "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"
SWIN = "coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml"


class _Rerun:
    def __init__(self, function, output):
        self.function, self.output = function, output

    def replay(self):
        for static, fresh in zip(tree_leaves(self.output), tree_leaves(self.function())):
            if isinstance(static, torch.Tensor):
                static.copy_(fresh)


class RerunBackend:
    """CUDA-graph semantics on the CPU: capture computes nothing (its outputs are NaN until
    a replay), a replay writes into the tensors the capture returned."""

    def __init__(self):
        self.warm_ups = 0
        self.captured_under = []  # (autocast cache enabled, autocast dtype) at each capture

    def warm_up(self, function, runs):
        for _ in range(runs):
            function()
        self.warm_ups += runs

    def capture(self, function):
        self.captured_under.append((torch.is_autocast_cache_enabled(), autocast_state("cpu")))
        output = function()
        for tensor in tree_leaves(output):
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                tensor.fill_(float("nan"))
        return _Rerun(function, output), output


def _tiny_model():
    torch.manual_seed(0)
    return build_model(load_config(TINY_CONFIG, ["MODEL.DEVICE", "cpu"])).eval()


def _images(height=64, width=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, height, width, generator=generator)


def _assert_same_outputs(actual, expected):
    for got, want in zip(tree_leaves(actual), tree_leaves(expected)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_replays_give_each_inputs_own_outputs():
    model, backend = _tiny_model(), RerunBackend()
    graphed = GraphedNetwork(model.network, backend=backend)
    first, second = _images(seed=0), _images(seed=1)
    with torch.no_grad():
        expected_first = copy.deepcopy(model.network(first))
        expected_second = copy.deepcopy(model.network(second))
        _assert_same_outputs(graphed(first), expected_first)  # captured, then replayed
        _assert_same_outputs(graphed(second), expected_second)  # replayed on the new images
    assert graphed.captures == 1 and len(graphed) == 1 and backend.warm_ups == 1


def test_a_graph_per_shape_and_precision_least_recently_used_dropped(caplog):
    model, backend = _tiny_model(), RerunBackend()
    graphed = GraphedNetwork(model.network, max_graphs=2, backend=backend)
    small, wide, tall = _images(64, 96), _images(64, 128), _images(96, 64)
    with torch.no_grad():
        graphed(small), graphed(wide), graphed(small)
        assert graphed.captures == 2
        with caplog.at_level(logging.WARNING, logger="mask2former.utils.cuda_graphs"):
            graphed(tall)  # drops wide, the least recently used
        assert "dropped the CUDA graph of (1, 3, 64, 128)" in caplog.text
        graphed(small)
        assert graphed.captures == 3
        graphed(wide)  # captured again
        assert graphed.captures == 4 and len(graphed) == 2
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = graphed(wide)
    assert graphed.captures == 5, "another precision is another graph"
    assert output["pred_masks"].dtype == torch.bfloat16
    # captured with the caller's autocast dtype and without autocast's cache of weight casts
    assert backend.captured_under[-1] == (False, torch.bfloat16)
    assert backend.captured_under[0] == (True, None)


def test_forwards_that_record_gradients_are_not_replayed():
    model = _tiny_model()
    graphed = GraphedNetwork(model.network, backend=RerunBackend())
    output = graphed(_images())
    assert output["pred_logits"].requires_grad and graphed.captures == 0


def test_model_results_outlive_later_replays_and_training_runs_eagerly():
    model, eager = _tiny_model(), _tiny_model()
    model.graphed_network = GraphedNetwork(model.network, backend=RerunBackend())
    inputs = [[{"image": torch.from_numpy(random_picture(48, 72, seed)).permute(2, 0, 1).float()}]
              for seed in (0, 1)]  # fmt: skip
    with torch.no_grad():
        first = model(inputs[0])[0]
        kept = copy.deepcopy(first)
        second = model(inputs[1])[0]
        expected = [eager(batch)[0] for batch in inputs]
    assert model.graphed_network.captures == 1
    for result, reference in ((first, kept), (first, expected[0]), (second, expected[1])):
        torch.testing.assert_close(result["sem_seg"], reference["sem_seg"], rtol=0, atol=0)
        torch.testing.assert_close(
            result["instances"].scores, reference["instances"].scores, rtol=0, atol=0
        )
        assert torch.equal(result["panoptic_seg"][0], reference["panoptic_seg"][0])
    model.train()
    model.run_network(_images())
    assert model.graphed_network.captures == 1


def test_a_copied_model_gets_its_own_empty_graphs():
    model = _tiny_model()
    model.graphed_network = GraphedNetwork(model.network, max_graphs=3, backend=RerunBackend())
    with torch.no_grad():
        model.run_network(_images())
    copied = copy.deepcopy(model)
    assert len(copied.graphed_network) == 0 and copied.graphed_network.max_graphs == 3
    assert copied.graphed_network.network.__self__ is copied


def test_cuda_graphs_are_refused_off_cuda(weights):
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device"):
        _tiny_model().use_cuda_graphs()
    with pytest.raises(ValueError, match="pass device='cuda'"):
        Predictor(TINY_CONFIG, weights, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="max_graphs"):
        GraphedNetwork(lambda images: {}, max_graphs=0, backend=RerunBackend())


# ----- the network's forward holds in a capture (fake CUDA tensors, on any machine) -----


class _HostToDevice(TorchDispatchMode):
    """Operations that bring host data (any CPU tensor) to CUDA: a captured graph would read
    the host memory again at every replay, or keep a 0-dim tensor's value of the capture."""

    def __init__(self):
        super().__init__()
        self.operations = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
        from_host = any(t.device.type == "cpu" for t in inputs)
        if from_host and any(t.device.type == "cuda" for t in inputs + outputs):
            self.operations.append(str(func))
        return output


class _Network(nn.Module):
    def __init__(self, model, extra=None):
        super().__init__()
        self.model, self.extra = model, extra

    def forward(self, images):
        if self.extra is not None:
            images = self.extra(images)
        return self.model.network(images)


def _fake_cuda_forward(model, size, extra=None):
    """The network's forward on fake CUDA tensors: host syncs and host-to-device copies."""
    network = _Network(model, extra)
    with FakeTensorMode() as mode:
        state = {
            name: mode.from_tensor(tensor).to("cuda")
            for name, tensor in [*network.named_parameters(), *network.named_buffers()]
        }
        images = mode.from_tensor(torch.zeros(1, 3, *size)).to("cuda")
        with torch.no_grad(), HostSyncRecorder("cuda") as syncs, _HostToDevice() as copies:
            outputs = functional_call(network, state, (images,))
    assert outputs["pred_masks"].device.type == "cuda"
    return syncs.events, copies.operations


@pytest.mark.parametrize("config", [TINY_CONFIG, R50, SWIN], ids=["shapes", "r50", "swin-t"])
def test_network_forward_can_be_captured(config):
    cfg = load_config(config) if config == TINY_CONFIG else shrunk_config(config)
    torch.manual_seed(0)
    syncs, copies = _fake_cuda_forward(build_model(cfg).eval(), (96, 128))
    assert syncs == [] and copies == []


def test_fake_cuda_forward_finds_copies_from_the_host():
    def blocking(images):
        return images + torch.tensor([0.0, 0.0, 0.0], device=images.device)[:, None, None]

    def asynchronous(images):  # as mask2former.utils.host_syncs.to_device copies
        return images + torch.zeros(3, 1, 1).to(images.device, non_blocking=True)

    for extra in (blocking, asynchronous):
        _, copies = _fake_cuda_forward(_tiny_model(), (64, 96), extra)
        assert copies, extra.__name__


# ----- weights stored in the autocast dtype -----


@pytest.mark.parametrize("config", [R50, SWIN], ids=["r50", "swin-t"])
def test_weights_stored_in_autocast_dtype_give_the_same_outputs(config):
    torch.manual_seed(0)
    model = build_model(shrunk_config(config)).eval()
    images = _images(96, 128)
    # the official models' autocast layers: convolutions, linear layers, packed attention
    expected_count = 0
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            names = ("in_proj_weight", "in_proj_bias")
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            names = ("weight", "bias")
        else:
            continue
        expected_count += sum(module._parameters.get(name) is not None for name in names)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = copy.deepcopy(model.network(images))
        assert store_weights_in_autocast_dtype(model, torch.bfloat16) == expected_count
        actual = model.network(images)
    _assert_same_outputs(actual, expected)
    assert {p.dtype for _, p in autocast_weights(model)} == {torch.bfloat16}
    cast = {id(p) for _, p in autocast_weights(model)}
    assert {p.dtype for p in model.parameters() if id(p) not in cast} == {torch.float32}
    with pytest.raises(ValueError, match="bfloat16 or torch.float16"):
        store_weights_in_autocast_dtype(model, torch.float32)


# ----- on a GPU -----


@pytest.mark.parametrize(
    "precision",
    [on_cuda(torch.float32), on_cuda(torch.bfloat16), on_cuda(torch.float16)],
    ids=["fp32", "bf16", "fp16"],
)
def test_graph_replays_match_eager_forwards_on_cuda(no_tf32, precision):
    model = _tiny_model().cuda()
    eager = copy.deepcopy(model)
    autocast = precision is not torch.float32
    model.use_cuda_graphs(precision if autocast else None, max_graphs=2)
    # the same kernels on the same weights: equal but for the order of reductions
    tolerance = 1e-4 if precision is torch.float32 else 1e-2
    with torch.no_grad(), torch.autocast("cuda", dtype=precision, enabled=autocast):
        for seed, size in enumerate([(64, 96), (64, 96), (96, 64), (64, 96)]):
            images = _images(*size, seed=seed).cuda()
            actual = copy.deepcopy(model.run_network(images))
            expected = eager.network(images)
            for got, want in zip(tree_leaves(actual), tree_leaves(expected)):
                torch.testing.assert_close(
                    got.float(), want.float(), rtol=tolerance, atol=tolerance
                )
    assert model.graphed_network.captures == 2


@pytest.mark.parametrize("precision", [on_cuda("fp32"), on_cuda("bf16")])
def test_predictor_with_cuda_graphs_agrees_with_float32_on_the_cpu(weights, no_tf32, precision):
    options = {"return_probabilities": True, "score_threshold": 0.0}
    images = [random_picture(48, 72, 0), random_picture(72, 48, 1), random_picture(48, 72, 2)]
    expected = [Predictor(TINY_CONFIG, weights, device="cpu", **options)(x) for x in images]
    predictor = Predictor(
        TINY_CONFIG, weights, device="cuda", precision=precision, cuda_graphs=True, **options
    )
    actual = [predictor(x) for x in images]
    assert predictor.model.graphed_network.captures == 2  # two padded sizes
    tolerance = PRECISION_TOLERANCE[precision]
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got.instances.scores, want.instances.scores, atol=tolerance)
        probabilities = [p.semantic.probabilities for p in (got, want)]
        distributions = [p / p.sum(axis=0, keepdims=True) for p in probabilities]
        np.testing.assert_allclose(*distributions, atol=tolerance)


# ----- frozen batch norm folded into the convolutions -----


def test_folded_frozen_batchnorm_gives_the_same_outputs():
    torch.manual_seed(0)
    model = build_model(shrunk_config(R50)).eval()
    generator = torch.Generator().manual_seed(1)
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    for norm in frozen:  # statistics of a trained model (a new one's fold to the identity)
        size = (len(norm.weight),)
        norm.weight.copy_(torch.rand(size, generator=generator) + 0.5)
        norm.bias.copy_(torch.randn(size, generator=generator))
        norm.running_mean.copy_(torch.randn(size, generator=generator))
        norm.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
    group_norms = sum(isinstance(m, nn.GroupNorm) for m in model.modules())
    images = _images(96, 128)
    with torch.no_grad():
        expected = copy.deepcopy(model.network(images))
        assert fold_frozen_batchnorm(model) == len(frozen) == 53  # every norm of the R50
        actual = model.network(images)
    for got, want in zip(tree_leaves(actual), tree_leaves(expected)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == group_norms > 0
    assert not any(".norm." in name for name in model.backbone.state_dict())
    assert fold_frozen_batchnorm(model) == 0


def test_a_failed_capture_says_what_to_do_and_is_tried_again():
    class FailingBackend(RerunBackend):
        def capture(self, function):
            raise RuntimeError("operation not permitted when stream is capturing")

    model = _tiny_model()
    graphed = GraphedNetwork(model.network, backend=FailingBackend())
    with torch.no_grad():
        for _ in range(2):  # nothing half-made is kept: the second call captures again
            with pytest.raises(RuntimeError) as error:
                graphed(_images())
            message = str(error.value)
            assert "Capturing the network into a CUDA graph failed for input (1, 3, 64, 96)" in (
                message
            )
            assert "operation not permitted" in message and "cuda_graphs=False" in message
    assert len(graphed) == 0 and graphed.captures == 0
