"""Builds gatedrnn._C against the torch already installed (use --no-build-isolation).

Environment:
  GATEDRNN_CUDA=1|0   force the CUDA sources on or off (default: on when the installed
                      torch has CUDA and a CUDA toolkit is found)
  GATEDRNN_CPU_VEC=avx512|avx2|default
                      vector ISA of the CPU kernels (default: the widest of avx512 and
                      avx2 that the building machine has, else the portable fallback)
  MAX_JOBS            parallel compile jobs for ninja
"""
import glob
import os
import sys

from setuptools import setup
from torch.utils import cpp_extension
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def env_flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.lower() in ("1", "true", "on", "yes")


def want_cuda():
    forced = env_flag("GATEDRNN_CUDA")
    if forced is not None:
        return forced
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def default_cpu_vec():
    flags = cpu_flags()
    if {"avx512f", "avx512dq", "avx512bw", "avx512vl", "fma"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "default"


def cpu_vec_flags():
    choice = os.environ.get("GATEDRNN_CPU_VEC") or default_cpu_vec()
    if choice == "avx512":
        # ATen's AVX-512 Vectorized<T>, as libtorch_cpu's own AVX512 kernels are built.
        return ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mfma",
                "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if choice == "avx2":
        # Selects ATen's AVX2 Vectorized<T> (SLEEF exp/tanh, exported by libtorch_cpu).
        return ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    if choice == "default":
        return []
    raise ValueError(
        f"GATEDRNN_CPU_VEC must be 'avx512', 'avx2' or 'default', got {choice!r}")


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
              + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
cxx_flags = ["-O3", "-std=c++17"] + cpu_vec_flags()
link_flags = []
if sys.platform.startswith("linux"):
    # at::parallel_for is a header template: compiled without OpenMP it runs every loop
    # on the calling thread. The libgomp.so.1 this links against resolves at run time to
    # the one torch has already loaded (same soname), so there is one OpenMP runtime.
    cxx_flags.append("-fopenmp")
    link_flags.append("-fopenmp")
extra = {"cxx": cxx_flags}
Extension = cpp_extension.CppExtension
if want_cuda():
    Extension = cpp_extension.CUDAExtension
    sources += rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp"))
                   + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
                   + glob.glob(os.path.join(ROOT, "csrc", "kernels", "*.cu")))
    extra["nvcc"] = ["-O3", "-std=c++17", "--use_fast_math"]
    cxx_flags.append("-DGATEDRNN_WITH_CUDA")

setup(
    ext_modules=[
        Extension(
            name="gatedrnn._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args=extra,
            extra_link_args=link_flags,
        )
    ],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
