"""The CUDA kernels of multi-scale deformable attention, run on the CPU by emulation.

tests/cuda_emulation compiles csrc/cuda/ms_deform_attn_kernels.cuh (the kernels and their
launch plan, the same source nvcc compiles) with g++, with host stand-ins for threads, warp
shuffles and atomics. That checks their indexing, the vector / 32-bit / grid-stride paths, the
group reductions (a divergent shuffle is reported) and out-of-bounds accesses (inputs sit
between NaN guards, outputs between sentinels) on machines without a GPU. What it cannot show:
speed, and hardware-only behaviour (the float4 atomics of compute capability 9.0, fast-math
rounding): the `cuda` tests cover those on a GPU.
"""

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from test_ms_deform_attn import make_inputs, needs_cpu_kernel

from mask2former.modeling.pixel_decoder.ops import functional, ms_deform_attn
from mask2former.modeling.pixel_decoder.ops import ms_deform_attn_reference as reference

HERE = Path(__file__).parent / "cuda_emulation"
KERNELS = Path(functional.__file__).parent / "csrc" / "cuda"
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
GUARD = 64  # elements of guard before and after every array


def build_emulator(folder, sm90):
    """The emulation library: the kernels' compute capability 9.x path (float4 atomics) when
    ``sm90``, else the path of the older GPUs (one atomic per value)."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++) to build the CUDA emulation")
    from torch.utils.cpp_extension import include_paths

    library = folder / ("emulate_sm90.so" if sm90 else "emulate.so")
    command = [
        compiler,
        "-std=c++20",
        "-O2",
        "-shared",
        "-fPIC",
        "-pthread",
        "-DMASK2FORMER_CUDA_EMULATION",
        *(["-DMASK2FORMER_EMULATE_SM90"] if sm90 else []),
        f"-I{include_paths()[0]}",
        f"-I{KERNELS}",
        f"-I{HERE}",
        str(HERE / "emulate.cpp"),
        "-o",
        str(library),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(library))
    lib.m2f_emulate.restype = ctypes.c_int
    return lib


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """Emulating an H200 (compute capability 9.0), the GPU this project is measured on."""
    return build_emulator(tmp_path_factory.mktemp("cuda_emulation"), sm90=True)


@pytest.fixture(scope="module")
def emulator_sm80(tmp_path_factory):
    return build_emulator(tmp_path_factory.mktemp("cuda_emulation_sm80"), sm90=False)


def placed(tensor, offset=0, fill=float("nan")):
    """(buffer, view): ``tensor``'s values in a flat buffer, ``offset`` + GUARD elements from
    its start and GUARD before its end, the rest filled with ``fill``."""
    buffer = torch.full((tensor.numel() + offset + 2 * GUARD,), fill, dtype=tensor.dtype)
    view = buffer[GUARD + offset : GUARD + offset + tensor.numel()].view(tensor.shape)
    view.copy_(tensor)
    return buffer, view


def guards_intact(buffer, view, fill):
    start = view.data_ptr() - buffer.data_ptr()
    start //= buffer.element_size()
    outside = torch.cat([buffer[:start], buffer[start + view.numel() :]])
    return bool((outside == fill).all())


def emulate(emulator, inputs, grad_output=None, offset=0, max_blocks=1 << 20, index64=False):
    """Runs the emulated forward (grad_output None) or backward; returns (results, plan).

    ``offset`` shifts value (and grad_output) by that many elements from 16-byte alignment,
    which must make the launch fall back to scalar loads."""
    value, shapes, starts, locations, weights = inputs
    value_buffer, value = placed(value, offset)
    _, locations = placed(locations)
    _, weights = placed(weights)
    sizes = torch.tensor(
        [value.shape[0], value.shape[1], value.shape[2], value.shape[3], locations.shape[1]]
        + [locations.shape[3], locations.shape[4]],
        dtype=torch.int64,
    )
    acc_dtype = locations.dtype
    sentinel = -12345.0
    if grad_output is None:
        outputs = [torch.empty(sizes[0], sizes[4], sizes[2] * sizes[3], dtype=value.dtype)]
        grad = None
    else:
        _, grad = placed(grad_output, offset)
        outputs = [
            torch.zeros(value.shape, dtype=acc_dtype),
            torch.empty(locations.shape, dtype=acc_dtype),
            torch.empty(weights.shape, dtype=acc_dtype),
        ]
    placed_outputs = [placed(t, fill=sentinel) for t in outputs]
    pointers = [t.data_ptr() for _, t in placed_outputs] + [None] * (3 - len(outputs))
    plan = (ctypes.c_int64 * 6)()
    error = ctypes.create_string_buffer(1024)
    status = emulator.m2f_emulate(
        ctypes.c_int(grad_output is not None),
        ctypes.c_int(DTYPE_CODES[value.dtype]),
        ctypes.c_void_p(value.data_ptr()),
        ctypes.c_void_p(shapes.data_ptr()),
        ctypes.c_void_p(starts.data_ptr()),
        ctypes.c_void_p(locations.data_ptr()),
        ctypes.c_void_p(weights.data_ptr()),
        ctypes.c_void_p(None if grad is None else grad.data_ptr()),
        *(ctypes.c_void_p(p) for p in pointers),
        ctypes.c_void_p(sizes.data_ptr()),
        ctypes.c_int64(max_blocks),
        ctypes.c_int(index64),
        plan,
        error,
        ctypes.c_int(len(error)),
    )
    assert status == 0, error.value.decode()
    assert value_buffer.isnan().sum() == 2 * GUARD + offset  # inputs untouched
    for buffer, view in placed_outputs:
        assert guards_intact(buffer, view, sentinel), "a write outside an output array"
    keys = ("vectorized", "index32", "group_shift", "blocks", "shuffles", "vector_atomics")
    return [view.clone() for _, view in placed_outputs], dict(zip(keys, plan))


def expected_results(inputs, grad_output, dtype):
    """Output and gradients from the CPU kernel (float32 / float64 values) or, for half
    values, from the float64 reference on the same (exactly representable) half values."""
    if dtype in (torch.float16, torch.bfloat16):
        inputs = [t.double() if t.is_floating_point() else t for t in inputs]
        grad_output = grad_output.double()
        fn = reference
    else:
        fn = ms_deform_attn
    value, shapes, starts, locations, weights = (
        t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs
    )
    output = fn(value, shapes, starts, locations, weights)
    grads = torch.autograd.grad(output, (value, locations, weights), grad_output)
    return [output.detach(), *grads]


CASES = [
    # batch, heads, channels, queries, shapes, points
    pytest.param(2, 8, 32, 37, ((6, 5), (3, 3), (2, 1)), 4, id="mask2former-heads8-c32"),
    pytest.param(1, 3, 17, 11, ((5, 7),), 2, id="c17-scalar-loads"),
    pytest.param(2, 2, 72, 9, ((4, 4), (2, 2)), 3, id="c72-several-passes"),
    pytest.param(3, 1, 4, 5, ((3, 4), (2, 2)), 2, id="c4-small-groups"),
]
LAUNCHES = [
    pytest.param({}, id="aligned-int32"),
    pytest.param({"offset": 1, "max_blocks": 1, "index64": True}, id="unaligned-int64-stride"),
]


def tolerances(dtype):
    return {
        torch.float64: (1e-12, 1e-12),
        torch.float32: (1e-5, 1e-5),
        torch.float16: (2e-3, 2e-3),
        torch.bfloat16: (1e-2, 1e-2),
    }[dtype]


def check_emulated_kernels(
    emulator, batch, heads, channels, queries, shapes, points, dtype, launch
):
    """Runs the emulated forward and backward, checks the launch plans and the results;
    returns the backward's plan."""
    inputs = make_inputs(batch, heads, channels, queries, shapes, points, dtype=dtype)
    # a few points exactly on pixel centres, edges and borders, and far outside
    locations = inputs[3]
    locations[0, 0, 0, 0, :2] = torch.tensor([[0.5 / shapes[0][1], 0.5 / shapes[0][0]], [0, 1]])
    locations[-1, -1, -1, -1, -1] = torch.tensor([1.0, 1.0])
    locations[0, -1, 0, 0, 0] = torch.tensor([-3.0, 0.5])
    generator = torch.Generator().manual_seed(1)
    grad_output = torch.randn(batch, queries, heads * channels, generator=generator).to(dtype)
    expected = expected_results(inputs, grad_output, dtype)

    (output,), forward_plan = emulate(emulator, inputs, **launch)
    grads, backward_plan = emulate(emulator, inputs, grad_output, **launch)

    vector = 16 // torch.empty((), dtype=dtype).element_size()
    for plan in (forward_plan, backward_plan):
        assert plan["vectorized"] == (channels % vector == 0 and "offset" not in launch)
        assert plan["index32"] == (not launch.get("index64", False))
        chunks = channels // vector if plan["vectorized"] else channels
        assert 1 << plan["group_shift"] == min(32, 1 << (chunks - 1).bit_length())
    if launch.get("max_blocks") == 1:
        assert forward_plan["blocks"] == 1  # every thread loops over several groups
    if backward_plan["group_shift"] > 0:
        assert backward_plan["shuffles"] > 0

    rtol, atol = tolerances(dtype)
    names = ("output", "grad value", "grad locations", "grad weights")
    for name, actual, wanted in zip(names, [output, *grads], expected):
        # the half types' gradients are computed in float32 from exact half values
        tol = (rtol, atol) if name == "output" or dtype == torch.float64 else (1e-5, 1e-5)
        scale = max(float(wanted.abs().max()), 1.0)
        torch.testing.assert_close(
            actual.double() / scale,
            wanted.double() / scale,
            rtol=tol[0],
            atol=tol[1],
            msg=lambda m, name=name: f"{name}: {m}",
        )
    return backward_plan


DTYPES = pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float64, torch.float16, torch.bfloat16],
    ids=["float32", "float64", "float16", "bfloat16"],
)


@needs_cpu_kernel
@pytest.mark.parametrize("launch", LAUNCHES)
@DTYPES
@pytest.mark.parametrize("batch,heads,channels,queries,shapes,points", CASES)
def test_emulated_kernels_match(
    emulator, batch, heads, channels, queries, shapes, points, dtype, launch
):
    plan = check_emulated_kernels(
        emulator, batch, heads, channels, queries, shapes, points, dtype, launch
    )
    # float accumulators (float32 and the half types) in whole vectors: float4 atomics
    vector_atomics = plan["vectorized"] and dtype != torch.float64
    assert (plan["vector_atomics"] > 0) == vector_atomics


@needs_cpu_kernel
@DTYPES
def test_emulated_kernels_match_without_vector_atomics(emulator_sm80, dtype):
    """The path of GPUs before compute capability 9.0: one atomic per value."""
    plan = check_emulated_kernels(
        emulator_sm80, 2, 8, 32, 37, ((6, 5), (3, 3), (2, 1)), 4, dtype, launch={}
    )
    assert plan["vectorized"] and plan["vector_atomics"] == 0


@pytest.mark.parametrize(
    "sizes,index32",
    [
        # N, S, M, D, Q, L, P: Mask2Former's pixel decoder at 1024 px, batch 16
        ((16, 21504, 8, 32, 21504, 3, 4), True),
        # value has 2^31 elements: too many for 32-bit offsets
        ((2, 2**20, 32, 32, 100, 1, 1), False),
        # small value, but 2^31 location values (N * Q * M * L * P * 2)
        ((1, 16, 8, 32, 2**22, 4, 8), False),
        # just under both limits
        ((1, 2**24, 4, 31, 2**22, 4, 8), True),
    ],
)
def test_launch_plan_uses_32_bit_offsets_only_when_they_fit(emulator, sizes, index32):
    plan = (ctypes.c_int64 * 4)()
    sizes_array = (ctypes.c_int64 * 7)(*sizes)
    emulator.m2f_plan(sizes_array, ctypes.c_int(4), ctypes.c_int(1), plan)
    assert bool(plan[1]) == index32
    # threads are capped by the grid size, never by the index type
    assert plan[3] >= 1


def test_launch_plan_vectorises_only_aligned_divisible_channels(emulator):
    plan = (ctypes.c_int64 * 4)()

    def vectorized(channels, element_bytes, aligned):
        sizes = (ctypes.c_int64 * 7)(2, 100, 8, channels, 50, 3, 4)
        emulator.m2f_plan(sizes, ctypes.c_int(element_bytes), ctypes.c_int(aligned), plan)
        return bool(plan[0]), 1 << plan[2]

    assert vectorized(32, 4, True) == (True, 8)  # float32: 4 per vector, 8 threads
    assert vectorized(32, 2, True) == (True, 4)  # half types: 8 per vector
    assert vectorized(32, 8, True) == (True, 16)  # float64: 2 per vector
    assert vectorized(32, 4, False) == (False, 32)  # unaligned: scalar loads
    assert vectorized(36, 2, True) == (False, 32)  # 36 channels are not whole vectors of 8
    assert vectorized(256, 4, True) == (True, 32)  # 64 chunks: 32 threads, two passes


def test_emulation_reports_a_divergent_shuffle(emulator):
    """The harness itself: a kernel whose odd lanes skip a shuffle must be reported."""
    error = ctypes.create_string_buffer(1024)
    assert emulator.m2f_emulation_self_test(error, ctypes.c_int(len(error))) == 1
    assert "never reached it (divergent shuffle)" in error.value.decode()
