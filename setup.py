"""Builds gatedrnn._C against the torch already installed (use --no-build-isolation).

Works with every torch from 2.4 on, CPU or CUDA builds, with no environment variables:
  - the C++ standard is the one the installed torch's BuildExtension adds when none is
    given (C++20 in torch 2.13 and 2.14), so none is set here;
  - the CPU micro-kernels (csrc/cpu/isa/*.cpp) are compiled once per vector ISA (portable,
    and on x86-64 AVX2 and AVX-512) and picked at run time, so one build runs on every
    CPU (GATEDRNN_CPU_CAPABILITY forces a lower one at run time);
  - with a CUDA build of torch and a CUDA toolkit, the CUDA kernels are built too, for
    every GPU architecture from sm_80 up that the toolkit's nvcc supports (plus PTX for the
    newest) when no GPU is visible and TORCH_CUDA_ARCH_LIST is not set.

Environment:
  GATEDRNN_CUDA=1|0     force the CUDA sources on or off (default: on when the installed
                        torch has CUDA and a CUDA toolkit is found)
  CUDA_HOME             the CUDA toolkit (default: the one the nvcc on PATH belongs to,
                        found even when that nvcc is a wrapper script, else /usr/local/cuda)
  TORCH_CUDA_ARCH_LIST  GPU architectures, e.g. "8.0;9.0+PTX" (default above)
  MAX_JOBS              parallel compile jobs for ninja
"""
import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = os.path.join(ROOT, "python", "gatedrnn", "_build_info.py")


def fail(message):
    """Stops the build with a message instead of a traceback."""
    sys.exit(f"\ngatedrnn: {message}\n")


def env_flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value.lower() in ("1", "true", "on", "yes"):
        return True
    if value.lower() in ("0", "false", "off", "no"):
        return False
    fail(f"{name}={value!r}: expected 1 or 0")


# ---------------------------------------------------------------------------------------
# The CUDA toolkit. Found before torch.utils.cpp_extension is imported, which reads
# CUDA_HOME once: its own search takes the directory above the first nvcc on PATH, which
# is wrong when that nvcc is a wrapper script (/usr/local/bin/nvcc -> /usr/local).


def toolkit_has_headers(path):
    return all(os.path.isfile(os.path.join(path, *p))
               for p in (("bin", "nvcc"), ("include", "cuda_runtime.h"),
                         ("include", "cuda_bf16.h")))


def toolkit_nvcc_reports(nvcc):
    """The toolkit directory nvcc itself uses (its TOP), or None."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return os.path.normpath(match.group(1).strip()) if match else None


def find_cuda_toolkit():
    """(toolkit directory or None, the places looked at)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            path = os.environ[var]
            return (path if toolkit_has_headers(path) else None), [f"{var}={path}"]
    looked = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        for candidate in (os.path.dirname(os.path.dirname(os.path.realpath(nvcc))),
                          toolkit_nvcc_reports(nvcc)):
            if candidate and candidate not in looked:
                looked.append(candidate)
                if toolkit_has_headers(candidate):
                    return candidate, looked
    if "/usr/local/cuda" not in looked:
        looked.append("/usr/local/cuda")
        if toolkit_has_headers("/usr/local/cuda"):
            return "/usr/local/cuda", looked
    return None, looked


def nvcc_version(toolkit):
    out = subprocess.run([os.path.join(toolkit, "bin", "nvcc"), "--version"],
                         capture_output=True, text=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def default_gencode_flags(toolkit):
    """-gencode flags for every sm_XY >= sm_80 the toolkit's nvcc supports, plus PTX of the
    newest: a build on a machine without GPUs runs on any GPU from Ampere on."""
    nvcc = os.path.join(toolkit, "bin", "nvcc")
    out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True).stdout
    archs = sorted({int(m) for m in re.findall(r"^sm_(\d+)$", out, re.MULTILINE)
                    if int(m) >= 80})
    if not archs:
        fail(f"{nvcc} --list-gpu-code lists no architecture from sm_80 up; set "
             "TORCH_CUDA_ARCH_LIST, or GATEDRNN_CUDA=0 to build without the CUDA kernels")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags, ";".join(f"{a // 10}.{a % 10}" for a in archs) + "+PTX"


class CudaPlan:
    """Whether the CUDA kernels are built, with what, or why not."""

    def __init__(self, toolkit=None, gencode=(), archs=None, skipped=None):
        self.build = toolkit is not None
        self.toolkit = toolkit
        self.version = nvcc_version(toolkit) if toolkit else None
        self.gencode = list(gencode)
        self.archs = archs
        self.skipped = skipped


def plan_cuda(torch):
    """Asked for (GATEDRNN_CUDA=1) but impossible: an error with the reason. By default, on
    with a CUDA torch and a toolkit of the same major version; otherwise a CPU-only build,
    with the reason printed and recorded (functional.py repeats it for CUDA tensors)."""
    forced = env_flag("GATEDRNN_CUDA")
    if forced is False:
        return CudaPlan(skipped="GATEDRNN_CUDA=0 at build time")
    how = "or set GATEDRNN_CUDA=0 to build the CPU kernels only"
    if torch.version.cuda is None:
        if forced:
            fail(f"GATEDRNN_CUDA=1, but the installed torch {torch.__version__} has no CUDA "
                 f"support; install a CUDA build of torch, {how}")
        return CudaPlan(skipped=f"torch {torch.__version__} has no CUDA")
    toolkit, looked = find_cuda_toolkit()
    version = nvcc_version(toolkit) if toolkit else None
    reason = None
    if toolkit is None:
        reason = ("no CUDA toolkit with its headers (bin/nvcc, include/cuda_runtime.h, "
                  f"include/cuda_bf16.h) was found; looked at: {', '.join(looked)}")
    elif version is None or version.split(".")[0] != torch.version.cuda.split(".")[0]:
        reason = (f"the CUDA toolkit at {toolkit} is CUDA {version}, but torch "
                  f"{torch.__version__} was built with CUDA {torch.version.cuda}, and the "
                  "major versions must match")
    if reason is not None:
        advice = (f"install a CUDA {torch.version.cuda.split('.')[0]}.x toolkit and set "
                  f"CUDA_HOME to it, {how}")
        if forced:
            fail(f"GATEDRNN_CUDA=1, but {reason}; {advice}")
        print(f"\ngatedrnn: building WITHOUT the CUDA kernels: {reason}. To build them, "
              f"{advice}.\n", file=sys.stderr)
        return CudaPlan(skipped=reason)
    os.environ["CUDA_HOME"] = toolkit
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return CudaPlan(toolkit, archs=os.environ["TORCH_CUDA_ARCH_LIST"])
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return CudaPlan(toolkit, archs="the visible GPUs' (torch's default)")
    gencode, archs = default_gencode_flags(toolkit)
    return CudaPlan(toolkit, gencode, archs)


# ---------------------------------------------------------------------------------------
# The CPU micro-kernels, one build per ISA. The flags are those ATen's own kernels of each
# capability are built with; the code of each build lives in the namespace CPU_CAPABILITY
# names, as ATen's Vectorized does.

IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
CPU_ISAS = {"default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"]}
if IS_X86_64:
    CPU_ISAS["avx2"] = ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2",
                        "-DCPU_CAPABILITY_AVX2"]
    CPU_ISAS["avx512"] = ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mfma",
                          "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def write_build_info(torch, cuda):
    """python/gatedrnn/_build_info.py: what this build was made against. gatedrnn checks it
    on import, before loading _C, so another torch gives a clear ImportError instead of an
    undefined-symbol one."""
    text = (
        "# Written by setup.py when gatedrnn._C was built (not tracked by git).\n"
        f"torch_version = {torch.__version__!r}\n"
        f"torch_git_version = {torch.version.git_version!r}\n"
        f"cuda = {cuda.build!r}\n"
        f"cuda_version = {cuda.version!r}\n"
        f"cuda_archs = {cuda.archs!r}\n"
        f"cuda_skipped = {cuda.skipped!r}  # why there are no CUDA kernels\n"
        f"cpu_isas = {tuple(CPU_ISAS)!r}\n")
    old = None
    if os.path.exists(BUILD_INFO):
        with open(BUILD_INFO) as f:
            old = f.read()
    if old != text:
        with open(BUILD_INFO, "w") as f:
            f.write(text)


def main():
    try:
        import torch
    except ImportError:
        fail("torch is not installed. Install it first (pip install torch, or see "
             "https://pytorch.org for the CPU or CUDA build), then build gatedrnn with "
             "pip install --no-build-isolation .")
    if os.environ.get("GATEDRNN_CPU_VEC"):
        print("gatedrnn: GATEDRNN_CPU_VEC is no longer used: every build has the kernels of "
              "every ISA; GATEDRNN_CPU_CAPABILITY picks one at run time", file=sys.stderr)
    cuda = plan_cuda(torch)
    # Imported only now: it reads CUDA_HOME, which plan_cuda may have set (and is set on
    # the module too, in case something imported it before).
    from torch.utils import cpp_extension
    if cuda.build:
        cpp_extension.CUDA_HOME = cuda.toolkit

    sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
                  + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    isa_sources = rel(glob.glob(os.path.join(ROOT, "csrc", "cpu", "isa", "*.cpp")))
    cxx_flags = ["-O3"] + (["-DGATEDRNN_CPU_X86"] if IS_X86_64 else [])
    link_flags = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is a header template: compiled without OpenMP it runs every loop
        # on the calling thread. The libgomp.so.1 this links against resolves at run time to
        # the one torch has already loaded (same soname), so there is one OpenMP runtime.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    extra = {"cxx": cxx_flags}
    Extension = cpp_extension.CppExtension
    if cuda.build:
        Extension = cpp_extension.CUDAExtension
        sources += rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp"))
                       + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
                       + glob.glob(os.path.join(ROOT, "csrc", "kernels", "*.cu")))
        extra["nvcc"] = ["-O3", "--use_fast_math"] + cuda.gencode
        cxx_flags.append("-DGATEDRNN_WITH_CUDA")
    write_build_info(torch, cuda)

    class BuildExtension(cpp_extension.BuildExtension):
        """Compiles csrc/cpu/isa/ once per ISA, each build into its own folder, and links
        those objects into the extension with the rest."""

        def build_extension(self, ext):
            objects = []
            for isa, flags in CPU_ISAS.items():
                # ext's cxx flags as BuildExtension completed them (ABI, extension name).
                args = {"cxx": list(ext.extra_compile_args["cxx"]) + flags, "nvcc": []}
                objects += self.compiler.compile(
                    isa_sources, output_dir=os.path.join(self.build_temp, "isa", isa),
                    include_dirs=ext.include_dirs, debug=self.debug, extra_postargs=args,
                    depends=ext.depends)
            ext.extra_objects = objects
            super().build_extension(ext)

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
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


main()
