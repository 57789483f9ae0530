"""One build for every x86-64 CPU: the CPU micro-kernels (csrc/cpu/isa/) are compiled once
per ISA and picked at run time; GATEDRNN_CPU_CAPABILITY forces a lower one. Also what the
build records about itself (python/gatedrnn/_build_info.py) and the import-time checks
that use it."""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
import sys
import types

import pytest
import torch

import gatedrnn
from gatedrnn import _build_info

ORDER = ("default", "avx2", "avx512")
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
#: the namespaces csrc/cpu/isa/ code lives in, by capability
NAMESPACE = {"default": "DEFAULT", "avx2": "AVX2", "avx512": "AVX512"}


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def best_capability() -> str:
    """What the CPU runs, from the kernel's view of CPUID (which lists only what the OS
    enables)."""
    if not IS_X86_64:
        return "default"
    flags = cpu_flags()
    if {"avx512f", "avx512dq", "avx512bw", "avx512vl", "fma"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "default"


BEST = best_capability()
RUNNABLE = ORDER[: ORDER.index(BEST) + 1]
TOO_HIGH = ORDER[ORDER.index(BEST) + 1:]


def run_python(code: str, capability: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("GATEDRNN_CPU_CAPABILITY", None)
    if capability is not None:
        env["GATEDRNN_CPU_CAPABILITY"] = capability
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_build_has_every_isa_of_this_architecture():
    assert _build_info.cpu_isas == (ORDER if IS_X86_64 else ("default",))


def test_capability_in_use():
    forced = os.environ.get("GATEDRNN_CPU_CAPABILITY")
    assert gatedrnn.cpu_capability() == (forced.lower() if forced else BEST)


# Every op, forward and backward, in each capability this CPU runs, against torch.nn in
# float64 (the parity suite runs in whichever one is in use; CI runs it in each).
PARITY = """
import torch, gatedrnn
from torch.nn.utils.rnn import pack_padded_sequence
torch.manual_seed(0)
worst = 0.0
# (T, N, I, H): small batches (the small-batch GEMM) and several unit blocks
for T, N, I, H in [(9, 1, 5, 7), (6, 3, 16, 40), (5, 64, 40, 300)]:
    for ours, ref in [(gatedrnn.LSTM(I, H), torch.nn.LSTM(I, H)),
                      (gatedrnn.LSTM(I, H, proj_size=3), torch.nn.LSTM(I, H, proj_size=3)),
                      (gatedrnn.GRU(I, H), torch.nn.GRU(I, H)),
                      (gatedrnn.RNN(I, H), torch.nn.RNN(I, H)),
                      (gatedrnn.RNN(I, H, nonlinearity="relu"),
                       torch.nn.RNN(I, H, nonlinearity="relu"))]:
        ours, ref = ours.double(), ref.double()
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(T, N, I, dtype=torch.float64)
        lengths = torch.randint(1, T + 1, (N,))
        lengths[0] = T
        for packed in (False, True):
            got = []
            for m in (ours, ref):
                xi = x.clone().requires_grad_()
                inp = pack_padded_sequence(xi, lengths, enforce_sorted=False) if packed else xi
                y = m(inp)[0]
                y = y.data if packed else y
                g = torch.autograd.grad(y.sin().sum(), [xi] + list(m.parameters()))
                got.append([y] + list(g))
            for a, b in zip(*got):
                worst = max(worst, (a - b).abs().max().item())
print(gatedrnn.cpu_capability(), worst)
"""


@pytest.mark.parametrize("capability", RUNNABLE)
def test_each_capability_this_cpu_runs_matches_torch_nn(capability):
    done = run_python(PARITY, capability)
    assert done.returncode == 0, done.stderr
    name, worst = done.stdout.split()
    assert name == capability
    assert float(worst) < 1e-10


@pytest.mark.parametrize("capability", RUNNABLE)
@pytest.mark.parametrize("spelling", [str.upper, str.title])
def test_capability_names_ignore_case(capability, spelling):
    done = run_python("import gatedrnn; print(gatedrnn.cpu_capability())", spelling(capability))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == capability


@pytest.mark.parametrize("value", ["sse4", "avx", "avx-512", "native", "1"])
def test_unknown_capability_fails_the_import(value):
    done = run_python("import gatedrnn", value)
    assert done.returncode != 0
    assert "RuntimeError" in done.stderr
    assert f"GATEDRNN_CPU_CAPABILITY='{value}'" in done.stderr
    assert "'default', 'avx2', 'avx512'" in done.stderr


# Empty (so reported as skipped) on a CPU that runs the widest build.
@pytest.mark.parametrize("capability", TOO_HIGH)
def test_capability_above_the_cpu_fails_the_import(capability):
    done = run_python("import gatedrnn", capability)
    assert done.returncode != 0
    assert "RuntimeError" in done.stderr
    assert f"asks for the {capability} kernels" in done.stderr
    assert f"runs at most '{BEST}'" in done.stderr


@functools.lru_cache(maxsize=None)
def disassembly() -> dict[str, list[str]]:
    """The extension's functions (demangled) and their instructions."""
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils, which the C++ toolchain that built gatedrnn has) is needed"
    text = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", gatedrnn._C.__file__],
                          capture_output=True, text=True, check=True).stdout
    functions: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            current = functions.setdefault(header.group(1), [])
        elif current is not None and re.match(r"^\s+[0-9a-f]+:\s", line):
            current.append(line.split(":", 1)[1].strip())
    return functions


def uses_avx(instructions: list[str]) -> bool:
    """VEX/EVEX-encoded instructions all start with 'v'; ymm/zmm/mask registers need AVX."""
    return any(re.match(r"v[a-z0-9]+\b", i) or re.search(r"%[yz]mm|%k[0-7]\b", i)
               for i in instructions)


def isa_of(function: str) -> str | None:
    for isa, ns in NAMESPACE.items():
        if f"::{ns}::" in function:
            return isa
    return None


def test_no_avx_instruction_outside_the_avx_builds():
    """A build with AVX instructions outside csrc/cpu/isa/'s AVX namespaces would die with
    SIGILL on a CPU without them, for instance where the linker kept an inline function's
    AVX-512 copy for the whole library. Checked on the built library itself."""
    functions = disassembly()
    assert len(functions) > 100
    outside = sorted(f for f, ins in functions.items()
                     if isa_of(f) not in ("avx2", "avx512") and uses_avx(ins))
    assert outside == []


@pytest.mark.skipif(not IS_X86_64, reason="the AVX builds exist on x86-64 only")
def test_each_isa_build_uses_its_instructions():
    functions = disassembly()
    registers = {"avx2": "%ymm", "avx512": "%zmm"}
    for isa, register in registers.items():
        code = [i for f, ins in functions.items() if isa_of(f) == isa for i in ins]
        assert any(register in i for i in code), isa
    # The wider build's registers never appear in the narrower ones.
    avx2 = [i for f, ins in functions.items() if isa_of(f) == "avx2" for i in ins]
    assert not any("%zmm" in i for i in avx2)
    kernels = ["lstm_kernels", "gru_kernels", "rnn_kernels", "small_batch_kernels"]
    for isa in ORDER:
        names = [f for f in functions if isa_of(f) == isa]
        for kernel in kernels:
            assert any(kernel in f for f in names), (isa, kernel)


def test_build_info_names_this_torch():
    assert _build_info.torch_version == torch.__version__
    assert _build_info.torch_git_version == torch.version.git_version


def test_ops_have_cuda_kernels_exactly_when_built_with_cuda():
    ops = [name for name in torch._C._dispatch_get_all_op_names()
           if name.startswith("gatedrnn::")]
    assert sorted(ops) == sorted(f"gatedrnn::{cell}_{part}"
                                 for cell in ("lstm", "gru", "rnn", "layer_norm_lstm",
                                              "layer_norm_gru")
                                 for part in ("forward", "backward"))
    for op in ops:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA") == _build_info.cuda, op
    if _build_info.cuda:
        assert torch.version.cuda is not None


def test_build_info_says_why_there_are_no_cuda_kernels():
    assert (_build_info.cuda_skipped is None) == _build_info.cuda
    if not _build_info.cuda and torch.version.cuda is None:
        assert _build_info.cuda_skipped == f"torch {torch.__version__} has no CUDA"


def test_cuda_input_without_cuda_kernels_says_why(monkeypatch):
    # No GPU is needed: only the device is read before the op would be called.
    monkeypatch.setattr(_build_info, "cuda", False)
    monkeypatch.setattr(_build_info, "cuda_skipped", "no CUDA toolkit was found")
    cuda_input = types.SimpleNamespace(device=torch.device("cuda", 0))
    for name in ("lstm", "gru", "rnn"):
        with pytest.raises(RuntimeError, match=r"input is on cuda:0, but this build of "
                           r"gatedrnn has no CUDA kernels: no CUDA toolkit was found\. "
                           r"Rebuild it with a CUDA toolkit"):
            getattr(gatedrnn.functional, name)(cuda_input, None, w_ih=None, w_hh=None)


def test_another_torch_fails_the_import_with_both_versions():
    code = "import torch; torch.__version__ = '9.9.9+other'; import gatedrnn"
    done = run_python(code, None)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: gatedrnn was built against torch "
                           f"{_build_info.torch_version}, but torch 9.9.9+other is installed")
    assert "pip install --no-build-isolation" in last


def test_same_version_other_build_of_torch_fails_the_import():
    code = ("import torch; torch.version.git_version = '0' * 40; import gatedrnn")
    done = run_python(code, None)
    assert done.returncode != 0
    assert f"(git {'0' * 40}) is installed" in done.stderr
