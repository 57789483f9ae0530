import torch

from ._base import FusedRNNMixin


class GRU(FusedRNNMixin, torch.nn.RNNBase):
    """Drop-in torch.nn.GRU (same arguments, parameters and outputs) on fused kernels."""

    _mode = "GRU"

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)
