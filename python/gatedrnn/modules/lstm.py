import torch

from ._base import FusedRNNMixin


class LSTM(FusedRNNMixin, torch.nn.RNNBase):
    """Drop-in torch.nn.LSTM (same arguments, parameters and outputs) on fused kernels.

    Beyond torch.nn, regularizers, all 0 (off) by default (functional.stacked has their
    math): zoneout, cell_zoneout, recurrent_dropconnect, variational_input_dropout,
    variational_state_dropout. Zoneout and the state dropout run the row-wise kernels
    (the plain team kernels have no place for them). And init (a scheme of gatedrnn.init_)
    with init_options, residual (each layer's input added to its output),
    recurrent_grad_clip (in-kernel clipping of the gate pre-activations' gradients) and
    return_states (forward also returns every step's h and c)."""

    _mode = "LSTM"
    _regularizers = ("zoneout", "cell_zoneout", "recurrent_dropconnect",
                     "variational_input_dropout", "variational_state_dropout")

    def __init__(self, *args, zoneout=0.0, cell_zoneout=0.0, recurrent_dropconnect=0.0,
                 variational_input_dropout=0.0, variational_state_dropout=0.0, init=None,
                 init_options=None, residual=False, recurrent_grad_clip=0.0,
                 return_states=False, **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        self._set_options(dict(
            zoneout=zoneout, cell_zoneout=cell_zoneout,
            recurrent_dropconnect=recurrent_dropconnect,
            variational_input_dropout=variational_input_dropout,
            variational_state_dropout=variational_state_dropout), init, init_options, residual,
            recurrent_grad_clip, return_states)

    # torch.nn.LSTM's own state checks and reordering (they do not call super()).
    get_expected_cell_size = torch.nn.LSTM.get_expected_cell_size
    check_forward_args = torch.nn.LSTM.check_forward_args
    permute_hidden = torch.nn.LSTM.permute_hidden
