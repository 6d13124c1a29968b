"""Multi-scale deformable attention: reference, CPU / CUDA kernels, dispatch, tracing, module."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from helpers import needs_cuda, on_cuda, run_python
from ms_deform_attn_bounds import RESULT_NAMES, float64_bounds

from mask2former.modeling.pixel_decoder.ops import (
    MSDeformAttn,
    functional,
    level_tensors,
    ms_deform_attn,
    ms_deform_attn_reference,
)
from mask2former.utils.host_syncs import HostSyncRecorder

OPS_PACKAGE = "mask2former.modeling.pixel_decoder.ops"
needs_cpu_kernel = pytest.mark.skipif(
    not functional.kernel_available("cpu"), reason="the _C extension is not built"
)


def make_inputs(
    batch=2,
    heads=2,
    channels=4,
    queries=5,
    shapes=((3, 4), (2, 2)),
    points=2,
    dtype=torch.float64,
    device="cpu",
    low=-0.2,
    high=1.2,
    seed=0,
):
    """Random inputs; sampling locations uniform in [low, high] (outside [0, 1] by default)."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    levels = len(shapes)
    value = torch.randn(batch, int(sizes.sum()), heads, channels, generator=generator)
    locations = low + (high - low) * torch.rand(
        batch, queries, heads, levels, points, 2, generator=generator
    )
    weights = torch.rand(batch, queries, heads, levels, points, generator=generator)
    location_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return (
        value.to(device, dtype),
        spatial_shapes.to(device),
        level_start_index.to(device),
        locations.to(device, location_dtype),
        weights.to(device, location_dtype),
    )


def random_grad(inputs, seed=1):
    """A random gradient of the output (N, Q, M * D), in value's dtype and on its device."""
    value, _, _, locations, _ = inputs
    batch, _, heads, channels = value.shape
    shape = (batch, locations.shape[1], heads * channels)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(value)


def outputs_and_grads(fn, inputs, grad_seed=1):
    """Output of ``fn`` and the gradients of value, locations and weights for the output
    gradient ``random_grad(inputs, grad_seed)``."""
    value, shapes, starts, locations, weights = (
        t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs
    )
    output = fn(value, shapes, starts, locations, weights)
    grad = random_grad(inputs, grad_seed).to(output)
    grads = torch.autograd.grad(output, (value, locations, weights), grad)
    return (output, *grads)


def naive_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """Loop-by-loop definition: bilinear sampling, zero padding, pixel centres at i + 0.5."""
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    output = torch.zeros(batch, queries, heads, channels, dtype=value.dtype)
    start = 0
    for level in range(levels):
        height, width = (int(s) for s in spatial_shapes[level])
        level_value = value[:, start : start + height * width].reshape(
            batch, height, width, heads, channels
        )
        start += height * width
        for n in range(batch):
            for q in range(queries):
                for m in range(heads):
                    for p in range(points):
                        x, y = (float(c) for c in sampling_locations[n, q, m, level, p])
                        col, row = x * width - 0.5, y * height - 0.5
                        col0, row0 = math.floor(col), math.floor(row)
                        sample = torch.zeros(channels, dtype=value.dtype)
                        for r, wr in ((row0, 1 - (row - row0)), (row0 + 1, row - row0)):
                            for c, wc in ((col0, 1 - (col - col0)), (col0 + 1, col - col0)):
                                if 0 <= r < height and 0 <= c < width:
                                    sample += wr * wc * level_value[n, r, c, m]
                        output[n, q, m] += attention_weights[n, q, m, level, p] * sample
    return output.flatten(2)


def test_reference_matches_naive_loop():
    inputs = make_inputs(batch=2, heads=2, channels=3, queries=4, shapes=((3, 5), (2, 3)))
    value, shapes, starts, locations, weights = inputs
    # exact pixel centres, borders and far-outside points too
    locations[0, 0, 0, 0] = torch.tensor([[0.1, 1 / 6], [-0.5, 0.5]], dtype=torch.float64)
    locations[1, 1, 1, 1] = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    expected = naive_ms_deform_attn(value, shapes, locations, weights)
    actual = ms_deform_attn_reference(*inputs)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    # the pixel centre (0.1, 1/6) of a 3x5 map reads exactly pixel (0, 0)
    single = ms_deform_attn_reference(
        value[:, :15], shapes[:1], starts[:1], locations[:, :, :, :1, :1], weights[:, :, :, :1, :1]
    )
    torch.testing.assert_close(single[0, 0, :3], weights[0, 0, 0, 0, 0] * value[0, 0, 0])


KERNEL_CASES = [
    # batch, heads, channels, queries, shapes, points
    pytest.param(1, 1, 3, 7, ((5, 7),), 1, id="one-level-batch1-heads1-c3"),
    pytest.param(2, 8, 17, 6, ((6, 3), (3, 2), (1, 1)), 4, id="three-levels-heads8-c17"),
    pytest.param(3, 2, 32, 9, ((8, 8), (4, 4)), 3, id="batch3-c32"),
    pytest.param(2, 3, 1, 4, ((2, 9), (9, 2)), 2, id="non-square-c1"),
]


# The kernels of each device, their tests skipped where the kernel is not built or no GPU.
DEVICES = [
    pytest.param("cpu", marks=needs_cpu_kernel),
    on_cuda("cuda"),
]
KERNELS = {"cpu": functional.CPU_KERNEL, "cuda": functional.CUDA_KERNEL}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch,heads,channels,queries,shapes,points", KERNEL_CASES)
@pytest.mark.parametrize("device", DEVICES)
def test_kernel_matches_reference(device, dtype, batch, heads, channels, queries, shapes, points):
    """float64 kernels match the float64 reference; float32 kernels are within float32
    rounding of it (tests/ms_deform_attn_bounds.py)."""
    assert functional.implementation_for(device, dtype) == KERNELS[device]
    inputs = make_inputs(
        batch, heads, channels, queries, shapes, points, dtype=dtype, device=device
    )
    actual = outputs_and_grads(ms_deform_attn, inputs)
    if dtype == torch.float32:
        float64_bounds(inputs, random_grad(inputs)).assert_close(actual)
        return
    expected = outputs_and_grads(ms_deform_attn_reference, [t.cpu() for t in inputs])
    for name, a, e in zip(RESULT_NAMES, actual, expected):
        torch.testing.assert_close(
            a.cpu(), e, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", ["cpu", on_cuda("cuda")])
def test_half_types_within_float32_bounds(device, dtype):
    """Half-precision values and gradients, float32 arithmetic (the CUDA kernel; the float32
    CPU kernel on a float32 copy on the CPU, the reference without the extension): within
    float32 rounding of float64, plus the final rounding to dtype."""
    built = device == "cuda" or functional.kernel_available("cpu")
    assert functional.implementation_for(device, dtype) == (
        KERNELS[device] if built else functional.REFERENCE
    )
    inputs = make_inputs(3, 8, 32, 50, ((16, 12), (8, 6), (4, 3)), 4, dtype=dtype, device=device)
    actual = outputs_and_grads(ms_deform_attn, inputs)
    assert [t.dtype for t in actual] == [dtype, dtype, torch.float32, torch.float32]
    float64_bounds(inputs, random_grad(inputs)).assert_close(actual)


LARGE_CASE = (7, 8, 32, 3001, ((40, 30), (20, 15), (10, 8)), 4)


@pytest.fixture(scope="module")
def large_case():
    """float32 inputs of LARGE_CASE and their float64 bounds (a few seconds)."""
    inputs = make_inputs(*LARGE_CASE, dtype=torch.float32)
    return inputs, float64_bounds(inputs, random_grad(inputs))


@pytest.mark.parametrize("device", DEVICES)
def test_large_odd_batch_within_float32_bounds(large_case, device):
    """Batch 7 (odd), 8 heads, 32 channels, 3001 queries: bigger launches, 4.0M location
    gradients, some of them at pixel edges."""
    inputs, bounds = large_case
    assert functional.implementation_for(device, torch.float32) == KERNELS[device]
    bounds.assert_close(outputs_and_grads(ms_deform_attn, [t.to(device) for t in inputs]))


@needs_cpu_kernel
def test_float32_bounds_reject_wrong_results(large_case):
    """Each result 1% off, or one term (a corner of one point) missing from a value gradient,
    is outside the bounds of the large case."""
    inputs, bounds = large_case
    actual = outputs_and_grads(ms_deform_attn, inputs)
    bounds.assert_close(actual)
    for i, name in enumerate(RESULT_NAMES):
        wrong = list(actual)
        wrong[i] = actual[i] * 1.01
        with pytest.raises(AssertionError, match=f"^{name}: "):
            bounds.assert_close(wrong)
    # the bottom-right corner of point 0 of head 0 on level 0, for the query where it weighs most
    _, _, _, locations, weights = inputs
    height, width = LARGE_CASE[4][0]
    x, y = locations[0, :, 0, 0, 0].double().unbind(-1)
    h, w = y * height - 0.5, x * width - 0.5
    inside = (h > 0) & (h < height - 1) & (w > 0) & (w < width - 1)
    corner_weight = torch.where(inside, (h - h.floor()) * (w - w.floor()), 0)
    query = int((weights[0, :, 0, 0, 0] * corner_weight).argmax())
    row = int(h[query].floor() + 1) * width + int(w[query].floor() + 1)
    channels = inputs[0].shape[-1]
    term = weights[0, query, 0, 0, 0] * corner_weight[query] * random_grad(inputs)[0, query]
    wrong = list(actual)
    wrong[1] = actual[1].clone()
    wrong[1][0, row, 0] -= term[:channels].float()
    with pytest.raises(AssertionError, match="^grad_value: "):
        bounds.assert_close(wrong)


def test_float32_bounds_exclude_only_points_at_pixel_edges():
    """A location within float32 rounding of a pixel edge or map border (y * H - 0.5 or
    x * W - 0.5 an integer) loses its location gradient along that axis; no other does."""
    inputs = make_inputs(1, 1, 2, 6, ((4, 8),), 1, dtype=torch.float32, low=0.05, high=0.95)
    locations = inputs[3]
    on_edge = torch.zeros(locations.shape, dtype=torch.bool)
    for query, axis, coordinate in (
        (0, 1, 0.375),  # y * 4 - 0.5 = 1
        (1, 0, 0.3125),  # x * 8 - 0.5 = 2
        (2, 1, -0.125),  # y * 4 - 0.5 = -1: the top border
        (3, 0, 1.0625),  # x * 8 - 0.5 = 8: the right border
        (4, 1, float(torch.nextafter(torch.tensor(0.375), torch.tensor(1.0)))),  # 1 ulp above
    ):
        locations[0, query, 0, 0, 0, axis] = coordinate
        on_edge[0, query, 0, 0, 0, axis] = True
    locations[0, 5, 0, 0, 0, 1] = 0.375 + 1e-5  # 4e-5 pixels from an edge: checked
    bounds = float64_bounds(inputs, random_grad(inputs))
    assert torch.equal(bounds.edge, on_edge)
    # locations on a pixel grid leave the location gradients unchecked: an error
    grid = make_inputs(1, 1, 2, 6, ((4, 8),), 1, dtype=torch.float32)
    grid[3].copy_((torch.randint(0, 8, grid[3].shape) + 0.5) / 8)  # x * 8 - 0.5 integers
    with pytest.raises(AssertionError, match="pixel edges"):
        float64_bounds(grid, random_grad(grid)).assert_close(
            outputs_and_grads(ms_deform_attn, grid)
        )


@needs_cpu_kernel
@pytest.mark.parametrize("channels", [1, 3, 8])
def test_cpu_kernel_gradcheck(channels):
    value, shapes, starts, locations, weights = make_inputs(
        batch=2, heads=2, channels=channels, queries=3, shapes=((3, 4), (2, 3)), points=2
    )
    value.requires_grad_()
    locations.requires_grad_()
    weights.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w),
        (value, locations, weights),
        eps=1e-6,
        atol=1e-5,
    )


@needs_cpu_kernel
def test_locations_all_outside_read_zero():
    inputs = make_inputs(low=1.6, high=3.0)
    for tensor in outputs_and_grads(ms_deform_attn, inputs):
        assert torch.count_nonzero(tensor) == 0


@pytest.mark.parametrize("fn", [ms_deform_attn, ms_deform_attn_reference])
def test_empty_queries(fn):
    inputs = make_inputs(queries=0, dtype=torch.float32)
    output, grad_value, grad_locations, grad_weights = outputs_and_grads(fn, inputs)
    assert output.shape == (2, 0, 2 * 4)
    assert grad_value.shape == inputs[0].shape and torch.count_nonzero(grad_value) == 0
    assert grad_locations.shape == inputs[3].shape
    assert grad_weights.shape == inputs[4].shape


def test_non_contiguous_inputs():
    value, shapes, starts, locations, weights = make_inputs(dtype=torch.float64)
    # same numbers, transposed storage
    value_t = value.transpose(0, 1).contiguous().transpose(0, 1)
    locations_t = locations.transpose(1, 2).contiguous().transpose(1, 2)
    weights_t = weights.transpose(0, 1).contiguous().transpose(0, 1)
    assert not value_t.is_contiguous() and not locations_t.is_contiguous()
    expected = outputs_and_grads(
        ms_deform_attn_reference, (value, shapes, starts, locations, weights)
    )
    actual = outputs_and_grads(ms_deform_attn, (value_t, shapes, starts, locations_t, weights_t))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def _replace(inputs, index, tensor):
    inputs = list(inputs)
    inputs[index] = tensor
    return inputs


BAD_INPUTS = [
    # (description, builder from good inputs, error type, message fragment)
    ("value length", lambda i: _replace(i, 0, i[0][:, :-1]), ValueError, "positions"),
    ("value heads", lambda i: _replace(i, 0, i[0][:, :, :1]), ValueError, "heads"),
    ("value batch", lambda i: _replace(i, 0, i[0][:1]), ValueError, "batch"),
    ("value rank", lambda i: _replace(i, 0, i[0].flatten(2)), ValueError, "(N, S, M, D)"),
    ("weights points", lambda i: _replace(i, 4, i[4][..., :1]), ValueError, "attention_weights"),
    (
        "weights levels",
        lambda i: _replace(i, 4, i[4][:, :, :, :1]),
        ValueError,
        "attention_weights",
    ),
    (
        "locations last dim",
        lambda i: _replace(i, 3, i[3][..., :1]),
        ValueError,
        "(N, Q, M, L, P, 2)",
    ),
    ("levels vs shapes", lambda i: _replace(i, 1, i[1][:1]), ValueError, "spatial_shapes"),
    ("start index length", lambda i: _replace(i, 2, i[2][:1]), ValueError, "level_start_index"),
    ("start index values", lambda i: _replace(i, 2, i[2] + 1), ValueError, "inconsistent"),
    ("float shapes", lambda i: _replace(i, 1, i[1].float()), TypeError, "integer"),
    ("integer value", lambda i: _replace(i, 0, i[0].long()), TypeError, "floating point"),
    ("integer weights", lambda i: _replace(i, 4, i[4].long()), TypeError, "floating point"),
    ("devices", lambda i: _replace(i, 4, i[4].to("meta")), ValueError, "same device"),
]


@pytest.mark.parametrize(
    "build,error,fragment", [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS]
)
def test_bad_inputs_raise(build, error, fragment):
    inputs = make_inputs(dtype=torch.float32)
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        ms_deform_attn(*build(inputs))


def test_level_tensors_are_checked_without_reading_them_back():
    value, shapes, starts, locations, weights = make_inputs(dtype=torch.float32)
    made_shapes, made_starts = level_tensors([(3, 4), (2, 2)], torch.device("cpu"))
    assert torch.equal(made_shapes, shapes) and torch.equal(made_starts, starts)
    with HostSyncRecorder("cpu") as recorder:
        output = ms_deform_attn(value, made_shapes, made_starts, locations, weights)
    assert recorder.events == [], recorder.counts()
    torch.testing.assert_close(output, ms_deform_attn(value, shapes, starts, locations, weights))
    # the same checks and messages as for tensors read back
    with pytest.raises(ValueError, match="value has S = 15 positions"):
        ms_deform_attn(value[:, :-1], made_shapes, made_starts, locations, weights)
    other_shapes, other_starts = level_tensors([(2, 2), (3, 4)], torch.device("cpu"))
    with pytest.raises(ValueError, match="inconsistent"):
        ms_deform_attn(value, made_shapes, other_starts, locations, weights)
    # modified in place after it was made: read back and checked again
    other_shapes[1, 0] = 2
    with pytest.raises(ValueError, match=r"spatial_shapes \[\(2, 2\), \(2, 4\)\] cover 12"):
        ms_deform_attn(value, other_shapes, made_starts, locations, weights)


def test_level_tensors_made_elsewhere_are_read_back_once():
    value, shapes, starts, locations, weights = make_inputs(dtype=torch.float32)
    reads = []
    for _ in range(3):
        with HostSyncRecorder("cpu") as recorder:
            ms_deform_attn(value, shapes, starts, locations, weights)
        reads.append(recorder.count())
    assert reads == [2, 0, 0]  # spatial_shapes and level_start_index, the first time only
    # changed in place: read and checked again
    shapes[1, 0] = 3
    with HostSyncRecorder("cpu") as recorder:
        with pytest.raises(ValueError, match=r"spatial_shapes \[\(3, 4\), \(3, 2\)\] cover 18"):
            ms_deform_attn(value, shapes, starts, locations, weights)
    assert recorder.count() == 1
    # inference tensors have no version counter: read at every call
    with torch.inference_mode():
        inference_shapes, inference_starts = shapes.clone(), starts.clone()
        inference_shapes[1, 0] = 2
    for _ in range(2):
        with HostSyncRecorder("cpu") as recorder:
            ms_deform_attn(value, inference_shapes, inference_starts, locations, weights)
        assert recorder.count() == 2


def test_reference_compiles_with_level_tensors_of_both_kinds():
    """torch.compile traces the reference (the implementation without the extension) with
    level tensors read before and with ones made by level_tensors(): the values the tracer
    reads are not taken from the host-side record, which it cannot follow."""
    value, shapes, starts, locations, weights = make_inputs(dtype=torch.float32)
    made_shapes, made_starts = level_tensors([(3, 4), (2, 2)], torch.device("cpu"))
    ms_deform_attn_reference(value, shapes, starts, locations, weights)  # recorded
    expected = ms_deform_attn_reference(value, shapes, starts, locations, weights)
    torch._dynamo.reset()
    compiled = torch.compile(ms_deform_attn_reference, fullgraph=True, backend="aot_eager")
    for level_shapes, level_starts in ((shapes, starts), (made_shapes, made_starts)):
        actual = compiled(value, level_shapes, level_starts, locations, weights)
        torch.testing.assert_close(actual, expected)


def test_int32_shapes_accepted():
    value, shapes, starts, locations, weights = make_inputs(dtype=torch.float64)
    expected = ms_deform_attn_reference(value, shapes, starts, locations, weights)
    actual = ms_deform_attn(value, shapes.int(), starts.int(), locations, weights)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_dispatch_without_extension(monkeypatch):
    monkeypatch.setattr(functional, "_C", None)
    for device_type, dtype in (("cpu", torch.float32), ("cuda", torch.float16)):
        assert not functional.kernel_available(device_type, dtype)
        assert functional.implementation_for(device_type, dtype) == functional.REFERENCE
    inputs = make_inputs(dtype=torch.float64)
    torch.testing.assert_close(ms_deform_attn(*inputs), ms_deform_attn_reference(*inputs))


@needs_cpu_kernel
def test_dispatch_with_extension():
    assert functional.implementation_for("cpu", torch.float32) == functional.CPU_KERNEL
    assert functional.implementation_for("cpu", torch.float64) == functional.CPU_KERNEL
    # half types on the CPU: the float32 kernel on a float32 copy
    assert functional.implementation_for("cpu", torch.bfloat16) == functional.CPU_KERNEL
    assert functional.implementation_for("cpu", torch.float16) == functional.CPU_KERNEL
    assert functional.implementation_for("cuda", torch.bfloat16) == (
        functional.CUDA_KERNEL if functional._C.cuda_built() else functional.REFERENCE
    )


# Strides 8, 16 and 32 of a 1024 x 2048 (Cityscapes) image. On a 256-wide map a grid
# coordinate rounded to bfloat16 is up to half a pixel off; 2x2 maps hide that.
REALISTIC_SHAPES = ((128, 256), (64, 128), (32, 64))


@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("device", ["cpu", on_cuda("cuda")])
def test_half_precision_matches_float64_on_realistic_maps(device, dtype, autocast):
    """Half-precision values: the only error left is the rounding of the output."""
    value, shapes, starts, locations, weights = make_inputs(
        1, 2, 8, 1000, REALISTIC_SHAPES, 4, dtype=dtype, device=device, low=0.0, high=1.0
    )
    weights = weights / weights.sum((-2, -1), keepdim=True)  # outputs of the values' scale
    expected = ms_deform_attn_reference(
        value.double(), shapes, starts, locations.double(), weights.double()
    )
    with torch.autocast(device, dtype=dtype, enabled=autocast):
        actual = ms_deform_attn(value, shapes, starts, locations, weights)
    assert actual.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(actual.double(), expected, rtol=eps, atol=eps)


def test_first_call_logs_choice_once(monkeypatch, caplog):
    monkeypatch.setattr(functional, "_logged_choices", set())
    inputs = make_inputs(dtype=torch.float64)
    with caplog.at_level(logging.INFO, logger=functional.__name__):
        ms_deform_attn(*inputs)
        ms_deform_attn(*inputs)
    messages = [r.getMessage() for r in caplog.records if "cpu/float64" in r.getMessage()]
    assert len(messages) == 1
    assert functional.implementation_for("cpu", torch.float64).replace("_", " ") in messages[0]


@pytest.mark.parametrize("extension", ["missing", "built without CUDA"])
def test_cuda_fallback_to_the_reference_warns_once_with_the_rebuild_command(
    monkeypatch, caplog, extension
):
    monkeypatch.setattr(functional, "_logged_choices", set())
    without_cuda = SimpleNamespace(cuda_built=lambda: False)
    monkeypatch.setattr(functional, "_C", None if extension == "missing" else without_cuda)
    implementation = functional.implementation_for("cuda", torch.float16)
    assert implementation == functional.REFERENCE
    with caplog.at_level(logging.INFO, logger=functional.__name__):
        # what ms_deform_attn does at each call with a CUDA tensor
        functional._log_choice_once("cuda", torch.float16, implementation)
        functional._log_choice_once("cuda", torch.float16, implementation)
    [record] = [r for r in caplog.records if "cuda/float16" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "slower" in record.getMessage()
    assert "pip install --no-build-isolation" in record.getMessage()


@pytest.mark.cuda
@needs_cuda
def test_cuda_tensor_without_extension_warns(monkeypatch, caplog):
    monkeypatch.setattr(functional, "_logged_choices", set())
    monkeypatch.setattr(functional, "_C", None)
    inputs = make_inputs(dtype=torch.float32, device="cuda")
    with caplog.at_level(logging.WARNING, logger=functional.__name__):
        torch.testing.assert_close(ms_deform_attn(*inputs), ms_deform_attn_reference(*inputs))
    assert any("pip install" in r.getMessage() for r in caplog.records)


def test_import_without_extension_uses_reference():
    """A fresh interpreter where _C cannot be found imports the package and still works."""
    script = f"""
import sys
sys.modules["{OPS_PACKAGE}._C"] = None  # makes the extension unfindable
import torch
from {OPS_PACKAGE} import ms_deform_attn, functional
assert functional._C is None
assert functional.implementation_for("cpu", torch.float32) == "reference"
shapes = torch.tensor([[2, 3]])
out = ms_deform_attn(torch.ones(1, 6, 1, 2), shapes, torch.tensor([0]),
                     torch.full((1, 1, 1, 1, 1, 2), 0.5), torch.ones(1, 1, 1, 1, 1))
assert out.shape == (1, 1, 2) and torch.allclose(out, torch.ones(1, 1, 2)), out
"""
    run_python(script)


def test_broken_extension_is_reported(monkeypatch):
    def fail(name):
        raise ImportError("undefined symbol: _ZN2at6Tensor")

    monkeypatch.setattr(functional.importlib, "import_module", fail)
    monkeypatch.setattr(functional.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(ImportError, match="rebuild"):
        functional._load_extension()


@needs_cpu_kernel
def test_torch_compile_traces_through_kernel():
    torch._dynamo.reset()
    inputs = make_inputs(dtype=torch.float32)

    def loss_fn(value, shapes, starts, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights).square().sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    value, shapes, starts, locations, weights = (
        t.clone().requires_grad_(t.is_floating_point()) for t in inputs
    )
    compiled(value, shapes, starts, locations, weights).backward()
    eager = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    loss_fn(*eager).backward()
    for traced, reference in zip((value, locations, weights), (eager[0], eager[3], eager[4])):
        torch.testing.assert_close(traced.grad, reference.grad)


@needs_cpu_kernel
def test_torch_export_contains_custom_op():
    class Attend(torch.nn.Module):
        def forward(self, value, shapes, starts, locations, weights):
            return ms_deform_attn(value, shapes, starts, locations, weights)

    inputs = make_inputs(dtype=torch.float32)
    exported = torch.export.export(Attend(), tuple(inputs))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert "mask2former.ms_deform_attn_forward.default" in targets
    torch.testing.assert_close(exported.module()(*inputs), ms_deform_attn_reference(*inputs))


def test_module_shapes_and_backward():
    torch.manual_seed(0)
    layer = MSDeformAttn(embed_dim=16, num_levels=2, num_heads=4, num_points=3)
    _, shapes, starts, _, _ = make_inputs(shapes=((4, 5), (2, 3)))
    query = torch.randn(2, 7, 16)
    value = torch.randn(2, 26, 16)
    reference_points = torch.rand(2, 7, 2, 2)
    output = layer(query, reference_points, value, shapes, starts)
    assert output.shape == (2, 7, 16)
    output.sum().backward()
    assert layer.sampling_offsets.weight.grad.abs().sum() > 0
    assert layer.value_proj.weight.grad.abs().sum() > 0


@needs_cpu_kernel
def test_module_compiles_without_graph_breaks():
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = MSDeformAttn(embed_dim=8, num_levels=2, num_heads=2, num_points=2)
    shapes = torch.tensor([[3, 4], [2, 2]])
    starts = torch.tensor([0, 12])
    args = (torch.randn(2, 5, 8), torch.rand(2, 5, 2, 2), torch.randn(2, 16, 8), shapes, starts)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), layer(*args))


def test_module_rejects_value_not_matching_shapes():
    layer = MSDeformAttn(embed_dim=8, num_levels=1, num_heads=2, num_points=1)
    with pytest.raises(ValueError, match="positions"):
        layer(
            torch.randn(1, 2, 8),
            torch.rand(1, 2, 1, 2),
            torch.randn(1, 5, 8),
            torch.tensor([[2, 2]]),
            torch.tensor([0]),
        )


def test_module_rejects_bad_reference_points():
    layer = MSDeformAttn(embed_dim=8, num_levels=1, num_heads=2, num_points=1)
    with pytest.raises(ValueError, match="reference_points"):
        layer(
            torch.randn(1, 2, 8),
            torch.rand(1, 2, 1, 4),  # Deformable DETR's boxes: not used by Mask2Former
            torch.randn(1, 4, 8),
            torch.tensor([[2, 2]]),
            torch.tensor([0]),
        )


# ---------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
@needs_cuda
def test_cuda_gradcheck_float64():
    value, shapes, starts, locations, weights = make_inputs(channels=5, device="cuda")
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w),
        (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_()),
        eps=1e-6,
        atol=1e-5,
    )


@pytest.mark.cuda
@needs_cuda
def test_cuda_empty_queries():
    inputs = make_inputs(queries=0, dtype=torch.float16, device="cuda")
    output, grad_value, _, _ = outputs_and_grads(ms_deform_attn, inputs)
    assert output.shape == (2, 0, 8) and torch.count_nonzero(grad_value) == 0
