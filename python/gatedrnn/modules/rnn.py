import torch

from ._base import FusedRNNMixin


class RNN(FusedRNNMixin, torch.nn.RNN):
    """Drop-in torch.nn.RNN (tanh or relu; same arguments, parameters and outputs) on fused kernels."""

    _mode = "RNN"
