import torch

from ._base import FusedRNNMixin


class LSTM(FusedRNNMixin, torch.nn.LSTM):
    """Drop-in torch.nn.LSTM (same arguments, parameters and outputs) on fused kernels."""

    _mode = "LSTM"
