import torch

from ._base import FusedRNNMixin


class LSTM(FusedRNNMixin, torch.nn.RNNBase):
    """Drop-in torch.nn.LSTM (same arguments, parameters and outputs) on fused kernels."""

    _mode = "LSTM"

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    # torch.nn.LSTM's own state checks and reordering (they do not call super()).
    get_expected_cell_size = torch.nn.LSTM.get_expected_cell_size
    check_forward_args = torch.nn.LSTM.check_forward_args
    permute_hidden = torch.nn.LSTM.permute_hidden
