"""LayerNormLSTM and LayerNormGRU: layer-normalized recurrent layers on fused kernels.

They take the constructor arguments of torch.nn.LSTM / GRU but proj_size, have torch.nn's
parameters under torch.nn's names (weight_ih_l0, bias_hh_l0_reverse, ...), and add each
layer-direction's LayerNorm gains and shifts: ln_weight_ih_l0 and ln_bias_ih_l0 (over the
gate row of W_ih x), ln_weight_hh_l0 / ln_bias_hh_l0 (W_hh h), and for the LSTM
ln_weight_cell_l0 / ln_bias_cell_l0 (the cell state). Gains start at 1, shifts at 0, the
other parameters as torch.nn initializes them. bias=False drops the shifts too. Inputs,
states and outputs are torch.nn's in every form (padded, batch_first, packed, unbatched,
hx or not). The math is in reference.py.
"""
import torch
from torch.nn import Parameter

from ._base import FusedRNNMixin

_KINDS = {"LSTM": ("ih", "hh", "cell"), "GRU": ("ih", "hh")}


class _LayerNormRNN(FusedRNNMixin, torch.nn.RNNBase):
    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, init=None,
                 init_options=None, residual=False, recurrent_grad_clip=0.0,
                 return_states=False, **regularizers):
        super().__init__(self._mode, input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, device=device, dtype=dtype)
        unknown = set(regularizers) - set(self._regularizers)
        if unknown:
            raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword "
                            f"argument {sorted(unknown)[0]!r}")
        self._set_options({n: regularizers.get(n, 0.0) for n in self._regularizers}, init,
                          init_options, residual, recurrent_grad_clip, return_states)
        gates = 4 if self._mode == "LSTM" else 3
        factory = dict(device=device, dtype=dtype)
        for suffix in self._suffixes():
            for kind in _KINDS[self._mode]:
                width = hidden_size if kind == "cell" else gates * hidden_size
                self.register_parameter(f"ln_weight_{kind}{suffix}",
                                        Parameter(torch.ones(width, **factory)))
                if bias:
                    self.register_parameter(f"ln_bias_{kind}{suffix}",
                                            Parameter(torch.zeros(width, **factory)))

    def _suffixes(self):
        directions = ["", "_reverse"] if self.bidirectional else [""]
        return [f"_l{layer}{d}" for layer in range(self.num_layers) for d in directions]

    def reset_parameters(self):
        """torch.nn's initialization for the cell's weights and biases; LayerNorm gains 1
        and shifts 0."""
        super().reset_parameters()
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("ln_weight_"):
                    p.fill_(1.0)
                elif name.startswith("ln_bias_"):
                    p.zero_()

    def _layer_weights(self):
        """torch.nn's (w_ih, w_hh, b_ih, b_hh, None) per layer-direction, and the tuple of
        its LayerNorms' gains and shifts (None where bias=False)."""
        result = []
        for weights, suffix in zip(super()._layer_weights(), self._suffixes()):
            norms = []
            for kind in _KINDS[self._mode]:
                norms.append(getattr(self, f"ln_weight_{kind}{suffix}"))
                norms.append(getattr(self, f"ln_bias_{kind}{suffix}") if self.bias else None)
            result.append((*weights, tuple(norms)))
        return result

    def _onnx_forward(self, input, hx):
        raise RuntimeError(f"gatedrnn.{type(self).__name__} cannot be exported to ONNX: ONNX "
                           f"has no layer-normalized recurrent operator")

    def __prepare_scriptable__(self):
        raise RuntimeError(f"gatedrnn.{type(self).__name__} cannot be compiled by "
                           f"torch.jit.script (its forward reaches the fused ops through "
                           f"Python, and torch.nn has no twin for it); use torch.compile, "
                           f"torch.export or torch.jit.trace")


class LayerNormLSTM(_LayerNormRNN):
    """Layer-normalized LSTM (Ba et al. 2016), all timesteps in fused kernels:
    gates = LN_ih(W_ih x) + LN_hh(W_hh h) + b_ih + b_hh (each LN over all 4H gates i, f, g,
    o), c' = s(f) c + s(i) tanh(g), h' = s(o) tanh(LN_cell(c')); LayerNorm with eps 1e-5
    and biased variance, as torch.nn.LayerNorm. Arguments and returns as torch.nn.LSTM's
    (no proj_size); the regularizers of gatedrnn.LSTM (zoneout, cell_zoneout,
    recurrent_dropconnect, variational_input_dropout, variational_state_dropout)."""

    _mode = "LSTM"
    _stacked_mode = "LayerNormLSTM"
    _regularizers = ("zoneout", "cell_zoneout", "recurrent_dropconnect",
                     "variational_input_dropout", "variational_state_dropout")

    get_expected_cell_size = torch.nn.LSTM.get_expected_cell_size
    check_forward_args = torch.nn.LSTM.check_forward_args
    permute_hidden = torch.nn.LSTM.permute_hidden


class LayerNormGRU(_LayerNormRNN):
    """Layer-normalized GRU, all timesteps in fused kernels: gx = LN_ih(W_ih x) + b_ih,
    gh = LN_hh(W_hh h) + b_hh (each LN over all 3H gates r, z, n), r = s(gx_r + gh_r),
    z = s(gx_z + gh_z), n = tanh(gx_n + r gh_n), h' = (1 - z) n + z h; LayerNorm with eps
    1e-5 and biased variance. Arguments and returns as torch.nn.GRU's; the regularizers of
    gatedrnn.GRU (zoneout, recurrent_dropconnect, variational_input_dropout,
    variational_state_dropout)."""

    _mode = "GRU"
    _stacked_mode = "LayerNormGRU"
    _regularizers = ("zoneout", "recurrent_dropconnect", "variational_input_dropout",
                     "variational_state_dropout")
