import torch

from ._base import FusedRNNMixin


class GRU(FusedRNNMixin, torch.nn.RNNBase):
    """Drop-in torch.nn.GRU (same arguments, parameters and outputs) on fused kernels.

    Beyond torch.nn, regularizers, all 0 (off) by default (functional.stacked has their
    math): zoneout, recurrent_dropconnect, variational_input_dropout,
    variational_state_dropout. And init (a scheme of gatedrnn.init_) with init_options,
    residual (each layer's input added to its output), recurrent_grad_clip (in-kernel
    clipping of the gate pre-activations' gradients) and return_states (forward also returns
    every step's state)."""

    _mode = "GRU"
    _regularizers = ("zoneout", "recurrent_dropconnect", "variational_input_dropout",
                     "variational_state_dropout")

    def __init__(self, *args, zoneout=0.0, recurrent_dropconnect=0.0,
                 variational_input_dropout=0.0, variational_state_dropout=0.0, init=None,
                 init_options=None, residual=False, recurrent_grad_clip=0.0,
                 return_states=False, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)
        self._set_options(dict(
            zoneout=zoneout, recurrent_dropconnect=recurrent_dropconnect,
            variational_input_dropout=variational_input_dropout,
            variational_state_dropout=variational_state_dropout), init, init_options, residual,
            recurrent_grad_clip, return_states)
