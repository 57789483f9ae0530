"""gatedrnn.init_: initialization schemes for the recurrent modules.

    gatedrnn.init_(module, "orthogonal")
    gatedrnn.init_(module, ["orthogonal", "forget_bias"], value=1.0)   # composed, in order
    gatedrnn.LSTM(128, 256, init="orthogonal+forget_bias")              # the same, at construction

Schemes (each applied to every layer-direction, in place, under no_grad, drawing from
torch's default generator):
  "torch"        torch.nn's default: every weight and bias U(-1/sqrt(H), 1/sqrt(H))
  "orthogonal"   w_hh orthogonal per gate block (Saxe et al. 2014), w_ih Xavier/Glorot
                 uniform per gate block, biases 0 (LayerNorm gains and shifts untouched)
  "forget_bias"  LSTMs: the forget gate's bias = `value` (default 1.0; Jozefowicz et al.
                 2015), as b_ih (b_hh's forget entries 0, so their sum is `value`)
  "chrono"       LSTMs: forget bias log(U(1, t_max - 1)) and input bias its negative (Tallec
                 & Ollivier 2018), `t_max` required (the longest dependency expected, > 2)
  "identity"     RNNs (IRNN, Le et al. 2015, for ReLU RNNs): w_hh = I, biases 0
A scheme that does not apply to the module (forget_bias on a GRU, identity on an LSTM, a
bias scheme with bias=False) raises ValueError, as do unknown schemes and options.
"""
import math
from typing import Sequence, Union

import torch

SCHEMES = ("torch", "orthogonal", "forget_bias", "chrono", "identity")
_OPTIONS = {"forget_bias": {"value"}, "chrono": {"t_max"}}


def _schemes(scheme: Union[str, Sequence[str]]):
    names = scheme.split("+") if isinstance(scheme, str) else list(scheme)
    for name in names:
        if name not in SCHEMES:
            raise ValueError(f"unknown initialization scheme {name!r}; the schemes are "
                             f"{', '.join(SCHEMES)} (composed with '+' or as a list)")
    return names


def _layer_directions(module):
    """(w_ih, w_hh, b_ih, b_hh) per layer-direction, the parameters themselves."""
    names = module._flat_weights_names
    per = len(names) // (module.num_layers * (2 if module.bidirectional else 1))
    for start in range(0, len(names), per):
        tensors = [getattr(module, n) for n in names[start:start + per]]
        yield tensors[0], tensors[1], (tensors[2] if module.bias else None), \
            (tensors[3] if module.bias else None)


def _gates(module) -> int:
    return {"LSTM": 4, "GRU": 3}.get(module.mode, 1)


def _is_lstm(module) -> bool:
    return module.mode == "LSTM"


def _check_options(names, options):
    allowed = set().union(*(_OPTIONS.get(n, set()) for n in names))
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"init_: option {unknown[0]!r} is not one of the schemes' "
                         f"{sorted(allowed) or 'no options'}")


def init_(module: torch.nn.Module, scheme: Union[str, Sequence[str]] = "torch", **options):
    """Initializes a gatedrnn (or torch.nn) LSTM, GRU, RNN, LayerNormLSTM or LayerNormGRU
    in place by `scheme` (a name, names joined by '+', or a list: applied in order); see the
    module docstring. Returns the module."""
    if not isinstance(module, torch.nn.RNNBase):
        raise ValueError(f"init_: expected a recurrent module (torch.nn.RNNBase), got "
                         f"{type(module).__name__}")
    names = _schemes(scheme)
    _check_options(names, options)
    with torch.no_grad():
        for name in names:
            _APPLY[name](module, **{k: v for k, v in options.items()
                                    if k in _OPTIONS.get(name, set())})
    return module


def _torch(module):
    module.reset_parameters()  # torch.nn's (and the LayerNorm gains 1, shifts 0)


def _orthogonal(module):
    gates = _gates(module)
    for w_ih, w_hh, b_ih, b_hh in _layer_directions(module):
        H = w_hh.shape[0] // gates
        for g in range(gates):
            torch.nn.init.orthogonal_(w_hh[g * H:(g + 1) * H])
            torch.nn.init.xavier_uniform_(w_ih[g * H:(g + 1) * H])
        for b in (b_ih, b_hh):
            if b is not None:
                b.zero_()


def _lstm_biases(module, scheme):
    if not _is_lstm(module):
        raise ValueError(f"init_ {scheme!r}: only the LSTMs have a forget gate, not "
                         f"{type(module).__name__}")
    if not module.bias:
        raise ValueError(f"init_ {scheme!r}: the module has no biases (bias=False)")
    return list(_layer_directions(module))


def _forget_bias(module, value=1.0):
    for _, w_hh, b_ih, b_hh in _lstm_biases(module, "forget_bias"):
        H = w_hh.shape[0] // 4
        b_ih[H:2 * H] = value
        b_hh[H:2 * H] = 0


def _chrono(module, t_max=None):
    layer_directions = _lstm_biases(module, "chrono")
    if t_max is None or not isinstance(t_max, (int, float)) or not t_max > 2:
        raise ValueError(f"init_ 'chrono': t_max (the longest dependency to learn, in steps) "
                         f"must be a number above 2, got {t_max!r}")
    for _, w_hh, b_ih, b_hh in layer_directions:
        H = w_hh.shape[0] // 4
        forget = torch.log(torch.empty(H, dtype=torch.float64).uniform_(1, t_max - 1))
        b_ih[H:2 * H] = forget.to(b_ih.dtype)
        b_ih[:H] = -forget.to(b_ih.dtype)
        b_hh[:2 * H] = 0


def _identity(module):
    if module.mode not in ("RNN_TANH", "RNN_RELU"):
        raise ValueError(f"init_ 'identity' (IRNN) is for the Elman RNN, not "
                         f"{type(module).__name__}")
    for _, w_hh, b_ih, b_hh in _layer_directions(module):
        torch.nn.init.eye_(w_hh)
        for b in (b_ih, b_hh):
            if b is not None:
                b.zero_()


_APPLY = {"torch": _torch, "orthogonal": _orthogonal, "forget_bias": _forget_bias,
          "chrono": _chrono, "identity": _identity}
