"""gatedrnn: fused LSTM, GRU and RNN kernels behind drop-in torch.nn replacements."""
import os as _os

import torch  # loads libtorch before the extension


def _check_build():
    """The compiled extension links against the exact torch it was built with; another
    torch would fail to load it with an undefined-symbol error, or worse. Say so first."""
    root = _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    if _os.path.isfile(_os.path.join(root, "setup.py")):
        rebuild = f"pip install --no-build-isolation -e {root}"
    else:
        rebuild = ("pip install --no-build-isolation --no-deps --force-reinstall "
                   "<the gatedrnn source folder>")
    try:
        from . import _build_info
    except ImportError:
        raise ImportError(
            f"gatedrnn's compiled extension has not been built; build it against the "
            f"installed torch ({torch.__version__}): {rebuild}") from None
    built = (_build_info.torch_version, _build_info.torch_git_version)
    installed = (torch.__version__, torch.version.git_version)
    if built != installed:
        what = "torch {} (git {})" if built[0] == installed[0] else "torch {}"
        raise ImportError(
            f"gatedrnn was built against {what.format(*built)}, but {what.format(*installed)} "
            f"is installed, and its compiled extension loads only into the torch it was "
            f"built with. Rebuild it against the installed torch: {rebuild}")
    return rebuild


_rebuild = _check_build()
try:
    from . import _C  # op schemas and kernels
except ImportError as error:
    raise ImportError(f"gatedrnn's compiled extension failed to load ({error}); rebuild it: "
                      f"{_rebuild}") from error

from ._C import cpu_cache_bytes, empty_cpu_cache
from . import ops  # noqa: F401,E402  (fake kernels and autograd)
from . import functional  # noqa: E402
from .convert import convert  # noqa: E402
from .init import init_  # noqa: E402
from .monitor import grad_norms  # noqa: E402
from .modules import (GRU, LSTM, RNN, GRUCell, LayerNormGRU, LayerNormLSTM,  # noqa: E402
                      LSTMCell, RNNCell)


def cpu_capability() -> str:
    """The build of the CPU kernels in use: ``"avx512"``, ``"avx2"`` or ``"default"``
    (portable). One build of gatedrnn carries all three (on x86-64) and picks the best this
    CPU supports; ``GATEDRNN_CPU_CAPABILITY=avx2`` (or ``default``), set before gatedrnn is
    imported, forces a lower one. Results are exactly reproducible for a given capability."""
    return _C.cpu_capability()


def cpu_bf16_kernel() -> str:
    """The GEMM kernels the bfloat16 CPU ops run on: ``"amx"`` (Intel AMX),
    ``"avx512_bf16"`` (AVX512_BF16: AMD Zen 4, Intel Cooper Lake on) or ``"none"``, where
    their GEMMs run in float32 (exact products of the bfloat16 values). Only the
    ``avx512`` capability has them; ``GATEDRNN_CPU_BF16=avx512_bf16`` (or ``none``), set
    before gatedrnn is imported, forces a lower one."""
    return _C.cpu_bf16_kernel()


# Decided now, so that a GATEDRNN_CPU_CAPABILITY or GATEDRNN_CPU_BF16 the CPU cannot run
# fails the import with its reason rather than the first op call.
cpu_capability()
cpu_bf16_kernel()

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "LayerNormLSTM",
           "LayerNormGRU", "convert", "init_", "grad_norms", "functional",
           "cpu_cache_bytes", "empty_cpu_cache",
           "cpu_capability", "cpu_bf16_kernel"]
__version__ = "0.1.0"
