import torch

from ._base import FusedRNNMixin


class RNN(FusedRNNMixin, torch.nn.RNNBase):
    """Drop-in torch.nn.RNN (tanh or relu; same arguments, parameters and outputs) on fused kernels.

    Beyond torch.nn: init (a scheme of gatedrnn.init_, e.g. "identity" for an IRNN) with
    init_options, residual (each layer's input added to its output), recurrent_grad_clip
    (in-kernel clipping of the pre-activations' gradients) and return_states (forward also
    returns every step's state)."""

    _mode = "RNN"

    def __init__(self, *args, init=None, init_options=None, residual=False,
                 recurrent_grad_clip=0.0, return_states=False, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        # nonlinearity is the 4th positional argument of torch.nn.RNN, not of RNNBase.
        if len(args) > 3:
            nonlinearity, args = args[3], args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", *args, **kwargs)
        self._set_options({}, init, init_options, residual, recurrent_grad_clip, return_states)
