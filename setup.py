"""Build and install Mask2Former with its multi-scale deformable attention extension.

The C++ CPU kernels are always built. The CUDA kernels are built when CUDA is available at
build time or ``FORCE_CUDA=1`` is set (then for ``TORCH_CUDA_ARCH_LIST``, by default
sm_80 and sm_90 plus PTX for newer GPUs). Build in place with::

    pip install --no-build-isolation -e .

Dependencies are listed once, in requirements.txt (see the Makefile for how they are
installed); this file does not repeat them.
"""

import glob
import os
import shutil


def _point_cuda_home_at_toolkit() -> None:
    """torch guesses the CUDA toolkit as the parent of the ``nvcc`` on PATH. When that is a
    wrapper script (e.g. /usr/local/bin/nvcc), the guess (/usr/local) has no CUDA headers or
    libraries and linking fails (``cannot find -lcudart``): use /usr/local/cuda instead.
    An explicit CUDA_HOME / CUDA_PATH always wins."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    runtime_header = os.path.join("include", "cuda_runtime.h")
    if not os.path.exists(os.path.join(guess, runtime_header)) and os.path.exists(
        os.path.join("/usr/local/cuda", runtime_header)
    ):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


_point_cuda_home_at_toolkit()

import torch  # noqa: E402  (CUDA_HOME must be settled before cpp_extension reads it)
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

OPS_SRC = os.path.join("mask2former", "modeling", "pixel_decoder", "ops", "csrc")
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if CUDA_HOME is None:
            raise RuntimeError(
                "FORCE_CUDA=1 but no CUDA toolkit was found: install nvcc matching "
                f"torch's CUDA {torch.version.cuda} or set CUDA_HOME."
            )
        return True
    return CUDA_HOME is not None and torch.cuda.is_available()


def get_extensions():
    sources = sorted(glob.glob(os.path.join(OPS_SRC, "*.cpp")))
    sources += sorted(glob.glob(os.path.join(OPS_SRC, "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(OPS_SRC, "cuda", "*.cu")))
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    extra_link_args = ["-fopenmp"]
    define_macros = []
    extension = CppExtension
    if _want_cuda() and cuda_sources:
        extension = CUDAExtension
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = [
            "-O3",
            "--use_fast_math",
            "-DCUDA_HAS_FP16=1",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
            "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        ]
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    return [
        extension(
            "mask2former.modeling.pixel_decoder.ops._C",
            sources,
            include_dirs=[os.path.abspath(OPS_SRC)],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


setup(
    name="mask2former",
    version="0.1.0",
    description="Mask2Former (masked-attention mask transformer) for Detectron2",
    python_requires=">=3.10",
    packages=find_packages(exclude=("tests", "configs", "demo", "tools", "datasets")),
    package_data={"mask2former": ["data/metadata/*.json"]},
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
