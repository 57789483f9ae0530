import torch

from ._base import FusedRNNMixin


class GRU(FusedRNNMixin, torch.nn.GRU):
    """Drop-in torch.nn.GRU (same arguments, parameters and outputs) on fused kernels."""

    _mode = "GRU"
