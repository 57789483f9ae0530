"""Drop-in torch.nn.LSTMCell, GRUCell and RNNCell on the fused ops' one-step path.

Decoders, attention models, RL policies and custom recurrences call a cell once per step
from Python. Each cell here is torch.nn's own class, subclassed: the constructor, parameter
names (weight_ih, weight_hh, bias_ih, bias_hh), default initialization, state_dict, repr
and `isinstance(cell, torch.nn.LSTMCell)` are torch.nn's. (The sequence modules derive from
RNNBase instead, because Dynamo refuses to trace instances of torch.nn.LSTM/GRU/RNN; it
traces the cells, so these can keep torch.nn's class.) Only forward() is new: it handles its
arguments as torch.nn's forward does, checks them as ATen's cells do (the same exception
types and, for the shape checks, the same messages), and runs one call of the fused forward
op with T = 1 (gatedrnn.functional), the parameters passed as they are, without a copy.

Integrations, as for the sequence modules (modules/_base.py): autograd to second order
through the ops; torch.compile(fullgraph=True); torch.jit.trace; under torch.onnx.export
torch.nn's own forward, which both exporters write as its decomposition (Gemm, Sigmoid,
Tanh, Mul, Add: torch.nn's cells export to no ONNX RNN node); torch.jit.script gets the
torch.nn twin on the same parameters, with a warning. Autocast: the output dtypes
torch.nn's cells give, which are not those of the sequence modules (see _autocast_step).

What differs from torch.nn's cells, all deliberate:
- LSTMCell: a c_0 of another dtype than the input is converted to the input's dtype, as
  gatedrnn.LSTM does; torch.nn computes the new cell state in the wider of the two dtypes.
- Calls torch.nn runs although they are malformed are refused with a RuntimeError: an
  unbatched (1-D) input with a 2-D state whose first size equals hidden_size (torch.nn's
  RNNCell returns a [hidden_size, hidden_size] result; its LSTMCell crashes the process).
- A dtype or device mismatch raises RuntimeError, as in torch.nn, with gatedrnn's message
  (which names the argument) instead of the matrix product's.
- On the CPU, float16 (and bfloat16 in the ReLU RNNCell) is computed in float32 and each
  result rounded once, and bfloat16 runs the bfloat16 ops (bfloat16 products, float32
  accumulation and gate math), as in gatedrnn's sequence modules; torch.nn rounds after
  every operation. Our error against a float64 reference is at most torch.nn's.
"""
import copy
import warnings

import torch

from .. import functional as F

_LSTM_EXPECTS_TWO_STATES = "lstm_cell expects two hidden states"
_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _check_sizes(input, states, w_ih, w_hh):
    """ATen's cell checks (check_rnn_cell_forward_input / _hidden), with their messages:
    the input's feature count against w_ih, each state's batch against the input's and its
    feature count against w_hh. Then one torch.nn does not make: each state must be 2-D
    (an unbatched input with a 2-D state is 3-D here; ATen broadcasts it, or crashes)."""
    batch, features = input.shape
    if features != w_ih.shape[1]:
        raise RuntimeError(f"input has inconsistent input_size: got {features} expected "
                           f"{w_ih.shape[1]}")
    hidden = w_hh.shape[1]
    for k, h in enumerate(states):
        if batch != h.shape[0]:
            raise RuntimeError(f"Input batch size {batch} doesn't match hidden{k} batch size "
                               f"{h.shape[0]}")
        if h.size(1) != hidden:  # size(): a 1-D state raises IndexError here, as in ATen
            raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {h.shape[1]}, "
                               f"expected {hidden}")
        if h.dim() != 2:
            raise RuntimeError(
                f"hx{f'[{k}]' if len(states) > 1 else ''}: for unbatched 1-D input the state "
                f"must be 1-D (hidden_size,), got a tensor of shape {tuple(h.shape[1:])}")


def _autocast_device(input):
    """The device type autocast is on for, if it is on for a floating-point input's device;
    else None (an integer input goes on to the op, which refuses it)."""
    kind = input.device.type
    if kind in ("cpu", "cuda") and input.is_floating_point() and torch.is_autocast_enabled(kind):
        return kind
    return None


class _FusedCell:
    """forward() helpers shared by the three cells; `_torch_nn` is the torch.nn class."""

    _torch_nn = torch.nn.RNNCellBase

    def _weights(self):
        """(weight_ih, weight_hh, bias_ih, bias_hh) as getattr gives them. Read from
        _parameters, where torch.func.functional_call puts its tensors too: through
        nn.Module.__getattr__ the four cost 2 us, a tenth of a small step's Python. A name
        not there (a parametrization takes it out) or None (bias=False) goes through
        getattr, which honours it."""
        params = self._parameters
        weights = []
        for name in _WEIGHT_NAMES:
            tensor = params.get(name)
            weights.append(tensor if tensor is not None else getattr(self, name))
        return weights

    def _zeros(self, input):
        # torch.nn's cells make the zero state hidden_size wide; the checks then compare it
        # with w_hh, as torch.nn's do.
        return torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                           device=input.device)

    def _fused(self, input, states, w_ih, w_hh, b_ih, b_hh):
        """One step of the fused forward op (T = 1) from [N, I] input and [N, H] states;
        returns the new states (one or two tensors)."""
        raise NotImplementedError

    def _step(self, input, states):
        """Checks, then one fused step; autocast as torch.nn's cells (_autocast_step)."""
        weights = self._weights()
        # _is_any_autocast_enabled first: a third of _autocast_device's cost
        autocast = _autocast_device(input) if torch._C._is_any_autocast_enabled() else None
        if autocast is not None:
            _check_sizes(input, states, weights[0], weights[1])
            return self._autocast_step(autocast, input, states, weights)
        # The op checks every size too, so torch.nn's checks run only once it has refused
        # the call, to raise torch.nn's error where it has one: ahead of the op, they were
        # a fifth of a small step's Python.
        try:
            return self._fused(input, states, *weights)
        except (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError) as error:
            failure = error
        F.check_device(input)
        _check_sizes(input, states, weights[0], weights[1])
        raise failure

    def _autocast_step(self, device, input, states, weights):
        """Under torch.autocast, the dtypes torch.nn's cells give, by the casts they make.

        CPU: torch.nn's cells are made of linear layers, which autocast casts, and
        pointwise operations, which promote. So the input, the hidden state h and the
        weights are rounded to the autocast dtype as torch.nn rounds them, and the result
        is in that dtype for RNNCell but, for LSTMCell and GRUCell, in the wider of it and
        the state's dtype (c for LSTMCell, h for GRUCell; zeros in the input's dtype when
        none is given), as torch.nn's: float32 for a float32 model. We compute in that
        dtype from the rounded values, more accurately than torch.nn, which computes
        the gates in the autocast dtype. One difference: GRUCell's h' = (1 - z) n + z h
        uses h rounded, torch.nn's uses h as given (a difference within the rounding).
        CUDA: torch.nn's autocast casts the whole cell (input, both states, weights) to
        the autocast dtype; so do we, and the ops run in it. (Not run on a GPU yet.)
        float64 tensors are never cast, as by autocast."""
        low = torch.get_autocast_dtype(device)

        def lower(t):
            if t is None or not t.is_floating_point() or t.dtype == torch.float64:
                return t
            return t.to(low)

        x = lower(input)
        gemm = x.dtype
        if device == "cpu" and not isinstance(self, torch.nn.RNNCell):
            # the state the pointwise part reads as given: c (LSTMCell), h (GRUCell)
            compute = torch.promote_types(gemm, states[-1].dtype)
        else:
            compute = gemm

        def widen(t):
            # Cast as autocast casts it, then to the compute dtype; a tensor autocast left
            # in another dtype (float64 among float32) reaches the op, which refuses it,
            # as torch.nn's matrix product does.
            t = lower(t)
            return t.to(compute) if t is not None and t.dtype == gemm else t

        # LSTMCell's c goes as given: _fused converts it to the input's dtype, which is
        # compute (the promotion of c's on the CPU; on CUDA autocast casts c too).
        new_states = (widen(states[0]), *states[1:])
        with torch.autocast(device, enabled=False):
            return self._fused(widen(input), new_states, *[widen(t) for t in weights])

    def _as_torch_nn(self):
        """This cell as an instance of its torch.nn class: a shallow copy, so parameters,
        buffers, hooks and training mode are shared, not copied."""
        twin = copy.copy(self)
        twin.__class__ = self._torch_nn
        return twin

    def __prepare_scriptable__(self):
        """torch.jit.script compiles the torch.nn twin: TorchScript cannot compile this
        forward, which reaches the fused ops through Python (as for the sequence modules,
        modules/_base.py)."""
        name = self._torch_nn.__name__
        warnings.warn(
            f"torch.jit.script: gatedrnn.{name} cannot be compiled by TorchScript, so the "
            f"scripted model runs torch.nn.{name} on the same parameters, and "
            f"torch.jit.script has also put that torch.nn module in its place in the "
            f"original model; gatedrnn.convert(model) swaps it back. torch.jit.trace, "
            f"torch.compile and torch.export keep gatedrnn's kernels.", UserWarning,
            stacklevel=2)
        return self._as_torch_nn()


def _squeezed(states, batched):
    return states if batched else tuple(s.squeeze(0) for s in states)


class LSTMCell(_FusedCell, torch.nn.LSTMCell):
    """Drop-in torch.nn.LSTMCell (same arguments, parameters and outputs) on the fused
    one-step path; a subclass of torch.nn.LSTMCell. Differences: see the module's
    docstring (a c_0 of another dtype is converted to the input's)."""

    _torch_nn = torch.nn.LSTMCell

    def _fused(self, input, states, w_ih, w_hh, b_ih, b_hh):
        h, c = states
        if c.dtype != input.dtype:
            c = c.to(input.dtype)  # as gatedrnn.LSTM; torch.nn promotes instead
        return F.cell_step("LSTM", input, (h, c), (w_ih, w_hh, b_ih, b_hh))

    def forward(self, input, hx=None):
        if F.in_onnx_export():
            return torch.nn.LSTMCell.forward(self, input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D "
                             f"instead")
        batched = input.dim() == 2
        if hx is not None:
            # hx is read as torch.nn reads it: iterated for the checks, then hx[0] and hx[1]
            # (so unbatched input takes the first two of any sequence).
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got "
                                     f"{value.dim()}D instead")
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = self._zeros(input)
            states = (zeros, zeros)
        elif not batched:
            states = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        else:
            if not isinstance(hx, (tuple, list)):
                raise TypeError(f"lstm_cell(): argument 'hx' must be tuple of Tensors, not "
                                f"{type(hx).__name__}")
            if len(hx) != 2:
                raise RuntimeError(_LSTM_EXPECTS_TWO_STATES)
            states = (hx[0], hx[1])
        return _squeezed(self._step(input, states), batched)


class GRUCell(_FusedCell, torch.nn.GRUCell):
    """Drop-in torch.nn.GRUCell (same arguments, parameters and outputs) on the fused
    one-step path; a subclass of torch.nn.GRUCell. Differences: see the module's
    docstring."""

    _torch_nn = torch.nn.GRUCell

    def _fused(self, input, states, w_ih, w_hh, b_ih, b_hh):
        return F.cell_step("GRU", input, states, (w_ih, w_hh, b_ih, b_hh))

    def forward(self, input, hx=None):
        if F.in_onnx_export():
            return torch.nn.GRUCell.forward(self, input, hx)
        return _single_state_forward(self, "GRUCell", input, hx)


class RNNCell(_FusedCell, torch.nn.RNNCell):
    """Drop-in torch.nn.RNNCell (tanh or relu; same arguments, parameters and outputs) on
    the fused one-step path; a subclass of torch.nn.RNNCell. As in torch.nn, a
    nonlinearity other than 'tanh' or 'relu' is accepted by the constructor and refused
    by forward (RuntimeError). Differences: see the module's docstring."""

    _torch_nn = torch.nn.RNNCell

    def _fused(self, input, states, w_ih, w_hh, b_ih, b_hh):
        return F.cell_step("RNN", input, states, (w_ih, w_hh, b_ih, b_hh), self.nonlinearity)

    def forward(self, input, hx=None):
        if F.in_onnx_export():
            return torch.nn.RNNCell.forward(self, input, hx)
        return _single_state_forward(self, "RNNCell", input, hx)


def _single_state_forward(cell, name, input, hx):
    """GRUCell's and RNNCell's forward: torch.nn's argument handling, one fused step."""
    dims = input.dim()
    if dims != 2 and dims != 1:
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {dims}D instead")
    if hx is not None and hx.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
    # torch.nn's RNNCell checks its nonlinearity here, in forward, not in its constructor.
    if name == "RNNCell" and cell.nonlinearity not in ("tanh", "relu"):
        raise RuntimeError(f"Unknown nonlinearity: {cell.nonlinearity}")
    if dims == 2:
        return cell._step(input, (cell._zeros(input) if hx is None else hx,))[0]
    input = input.unsqueeze(0)
    hx = cell._zeros(input) if hx is None else hx.unsqueeze(0)
    return cell._step(input, (hx,))[0].squeeze(0)
