"""Registers fake (meta) kernels and autograd formulas for every gatedrnn op.

Importing this package requires gatedrnn._C, which defines the op schemas.
"""
from . import gru, layer_norm_gru, layer_norm_lstm, lstm, rnn  # noqa: F401
