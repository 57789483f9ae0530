"""gatedrnn: fused LSTM, GRU and RNN kernels behind drop-in torch.nn replacements."""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  (op schemas and kernels)
from ._C import cpu_cache_bytes, empty_cpu_cache
from . import ops  # noqa: F401  (fake kernels and autograd)
from . import functional
from .convert import convert
from .modules import GRU, LSTM, RNN

__all__ = ["LSTM", "GRU", "RNN", "convert", "functional", "cpu_cache_bytes", "empty_cpu_cache"]
__version__ = "0.1.0"
