"""Registers fake (meta) kernels and autograd formulas for every gatedrnn op.

Importing this package requires gatedrnn._C, which defines the op schemas.
"""
from . import gru, layer_norm_gru, layer_norm_lstm, lstm, rnn  # noqa: F401

# The row-wise ops (layer-normalized cells, zoneout, variational state dropout, in-kernel
# gradient clipping) have CPU kernels only so far; every other op has a CUDA kernel in a
# CUDA build (scripts/check_install.py and tests/test_cpu_capability.py check both).
CPU_ONLY_OPS = tuple(f"gatedrnn::layer_norm_{cell}_{part}" for cell in ("lstm", "gru")
                     for part in ("forward", "backward"))
