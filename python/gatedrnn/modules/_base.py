"""Shared forward of the drop-in modules.

Each module derives from torch.nn.RNNBase, the base of torch.nn.LSTM/GRU/RNN, so the
constructor, argument validation, parameter names, default initialization,
state_dict layout, flatten_parameters(), all_weights and the forward-argument checks
are torch.nn's own. Only forward() is new: it normalizes the input the way torch.nn
does (packed, batch_first, unbatched, hx given or not) and runs the fused ops.

They derive from RNNBase rather than from torch.nn.LSTM/GRU/RNN themselves because
torch.compile refuses to trace any instance of those three classes (Dynamo's
`allow_rnn` guard); RNNBase instances it traces, and our forward has no graph break.

Two integrations hand the module to torch.nn's own class instead, as a twin that shares
every parameter, buffer and hook (_as_torch_nn): ONNX export (both exporters), which then
writes the standard ONNX LSTM / GRU / RNN nodes torch.nn's modules export to, and
torch.jit.script, which cannot compile a forward that calls the fused ops from Python.
"""
import copy
import warnings

import torch
from torch.nn.utils.rnn import PackedSequence

from .. import functional as F
from .. import monitor
from ..ops.lstm import PROJECTION_NOT_IN_ONNX

_TORCH_NN = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}


class FusedRNNMixin:
    """forward() for LSTM/GRU/RNN subclasses. `_mode` is "LSTM", "GRU" or "RNN"."""

    _mode = ""
    # The mode F.stacked runs (the layer-normalized modules: theirs); else _mode.
    _stacked_mode = ""
    # The regularizers this class takes (functional.REGULARIZERS); each an attribute, 0 = off.
    _regularizers = ()

    def _set_regularizers(self, rates):
        """Checks and keeps the regularizer rates given to the constructor (ValueError for
        a rate outside [0, 1) or not a number, as torch.nn's dropout)."""
        for name, p in rates.items():
            setattr(self, name, F.check_rate(name, p))
        if getattr(self, "proj_size", 0) > 0:
            row_wise = [n for n in ("zoneout", "cell_zoneout", "variational_state_dropout")
                        if getattr(self, n, 0)]
            if row_wise:
                raise ValueError(f"{', '.join(row_wise)}: not with proj_size > 0 (the row-wise "
                                 f"LSTM these run in has no projection)")

    def _set_options(self, rates, init=None, init_options=None, residual=False,
                     recurrent_grad_clip=0.0, return_states=False):
        """The constructor options beyond torch.nn's: regularizer rates, an initialization
        scheme (gatedrnn.init_), residual connections between layers, in-kernel gradient
        clipping, and return_states: forward returns (output, hx, states) with every step's
        states (an attribute, which may be switched later)."""
        self.return_states = bool(return_states)
        self._set_regularizers(rates)
        self.recurrent_grad_clip = F.check_grad_clip(recurrent_grad_clip)
        if self.recurrent_grad_clip and getattr(self, "proj_size", 0):
            raise ValueError("recurrent_grad_clip: not with proj_size > 0 (the row-wise LSTM "
                             "it runs in has no projection)")
        self.residual = bool(residual)
        if self.residual:
            directions = 2 if self.bidirectional else 1
            out = (getattr(self, "proj_size", 0) or self.hidden_size) * directions
            for layer in range(self.num_layers):
                width = self.input_size if layer == 0 else out
                if width != out:
                    raise ValueError(f"residual=True: layer {layer} takes {width} features and "
                                     f"gives {out}, so its input cannot be added to its output")
        if init is not None:
            from ..init import init_
            init_(self, init, **(init_options or {}))
        elif init_options:
            raise ValueError("init_options given without init")

    def _check_twin_is_exact(self, what):
        """The torch.nn twin (ONNX export, jit.script) has no regularizers: refuse a module
        with any, rather than export or script different math."""
        rates = {n: p for n, p in self._regularizer_rates().items() if p}
        for option in ("residual", "recurrent_grad_clip", "return_states"):
            if getattr(self, option, 0):
                rates[option] = getattr(self, option)
        if rates:
            listed = ", ".join(f"{n}={p}" for n, p in rates.items())
            raise RuntimeError(f"{what}: gatedrnn.{type(self).__name__} with {listed} has no "
                               f"torch.nn counterpart to run there (torch.nn's modules have no "
                               f"such options); set them off first")

    def _regularizer_rates(self):
        # getattr: a torch.nn module re-classed by convert() has none of them.
        return {name: getattr(self, name, 0.0) for name in self._regularizers}

    def extra_repr(self):
        options = self._regularizers + ("residual", "recurrent_grad_clip", "return_states")
        rates = ", ".join(f"{n}={getattr(self, n)}" for n in options if getattr(self, n, 0))
        return super().extra_repr() + (", " + rates if rates else "")

    def _state_sizes(self):
        proj = getattr(self, "proj_size", 0)
        if self._mode == "LSTM":
            return [proj if proj > 0 else self.hidden_size, self.hidden_size]
        return [self.hidden_size]

    def _layer_weights(self):
        """(w_ih, w_hh, b_ih, b_hh, w_hr) per layer-direction, read through getattr so
        parametrizations and reassigned parameters are honoured."""
        per = len(self._flat_weights_names) // (self.num_layers * (2 if self.bidirectional else 1))
        result, params = [], self._parameters
        for start in range(0, len(self._flat_weights_names), per):
            names = self._flat_weights_names[start:start + per]
            # A registered parameter straight from _parameters (getattr's fallback through
            # Module.__getattr__ costs ~0.5 us a name); getattr for the rest (parametrized
            # or reassigned).
            tensors = [params[n] if n in params else getattr(self, n) for n in names]
            w_ih, w_hh = tensors[0], tensors[1]
            b_ih = tensors[2] if self.bias else None
            b_hh = tensors[3] if self.bias else None
            w_hr = tensors[-1] if getattr(self, "proj_size", 0) > 0 else None
            result.append((w_ih, w_hh, b_ih, b_hh, w_hr))
        return result

    def _zero_states(self, input, batch):
        layers = self.num_layers * (2 if self.bidirectional else 1)
        return tuple(torch.zeros(layers, batch, size, dtype=input.dtype, device=input.device)
                     for size in self._state_sizes())

    def _lstm_kernel_checks(self, hx):
        """What torch.nn.LSTM's kernel checks first, with the exception types it raises:
        hx must be a pair (TypeError if not a sequence) of 3-D tensors (IndexError, a
        dimension out of range, otherwise)."""
        if not isinstance(hx, (tuple, list)):
            raise TypeError(f"lstm(): argument 'hx' must be tuple of Tensors, not "
                            f"{type(hx).__name__}")
        if len(hx) != 2:
            raise RuntimeError("lstm expects two hidden states")
        for h in hx:
            if h.dim() != 3:
                raise IndexError(f"Dimension out of range (expected to be in range of "
                                 f"[-{h.dim()}, {h.dim() - 1}], but got 2)")

    def _as_tuple(self, hx):
        return tuple(hx) if self._mode == "LSTM" else (hx,)

    def _from_tuple(self, states):
        return states if self._mode == "LSTM" else states[0]

    @staticmethod
    def _lstm_cell_state_dtype(states, data):
        """A c_0 of another dtype than the input's, converted to it: torch.nn.LSTM's
        arithmetic promotes it to the input's there (its oneDNN path raises instead). Not
        under autocast (but of float64 input, which autocast leaves alone), where torch.nn's
        gates are in the autocast dtype and c_0's dtype decides c's (ops/lstm.py,
        _cpu_autocast_dtypes)."""
        h, c = states
        if c.dtype == data.dtype or (torch.is_autocast_enabled(data.device.type)
                                     and data.dtype != torch.float64):
            return states
        return (h, c.to(data.dtype))

    def _as_torch_nn(self):
        """This module as an instance of its torch.nn class: a shallow copy, so parameters,
        buffers, hooks and training mode are shared, not copied (as convert() re-classes the
        other way)."""
        twin = copy.copy(self)
        twin.__class__ = _TORCH_NN[self._mode]
        return twin

    def __prepare_scriptable__(self):
        """torch.jit.script compiles the torch.nn twin: TorchScript cannot compile this
        forward, which reaches the fused ops through Python. The scripted module runs
        torch.nn's kernels on the shared parameters (same math; float32 results differ
        from ours in the last bits). torch.jit.script also puts what this returns in place
        of the submodule in the model being scripted, so it says so."""
        self._check_twin_is_exact("torch.jit.script")
        warnings.warn(
            f"torch.jit.script: gatedrnn.{type(self).__name__} cannot be compiled by "
            f"TorchScript, so the scripted model runs torch.nn.{self._mode} on the same "
            f"parameters, and torch.jit.script has also put that torch.nn module in its place "
            f"in the original model; gatedrnn.convert(model) swaps it back. torch.jit.trace, "
            f"torch.compile and torch.export keep gatedrnn's kernels.", UserWarning,
            stacklevel=2)
        return self._as_torch_nn()

    def forward(self, input, hx=None, reset=None):
        """torch.nn's forward; beyond it, reset: a bool mask of per-step resets, [T, N]
        ([N, T] with batch_first, [T] unbatched; packed input: [T, N] padded, in the batch's
        own order): where set, that sequence's state restarts from its initial state (hx,
        or zeros) before step t, in every layer (episode boundaries in reinforcement
        learning). Unidirectional modules only."""
        if reset is None and type(input) is torch.Tensor:
            result = self._plain_forward(input, hx)
            if result is not None:
                return result
        if F.in_onnx_export():
            if reset is not None:
                raise RuntimeError("ONNX export: per-step resets (reset=...) have no ONNX "
                                   "counterpart")
            return self._onnx_forward(input, hx)
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        lstm = self._mode == "LSTM"
        batched = True
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                states = self._zero_states(data, int(batch_sizes[0]))
                hx = self._from_tuple(states)
            else:
                # Reorder to the sorted batch first, then check, as torch.nn does
                # (torch.nn.LSTM leaves every check to its kernel).
                hx = self.permute_hidden(hx, sorted_indices)
            if lstm:
                # torch.nn.LSTM checks packed input only in its kernel, so every
                # mistake there is a RuntimeError (a dtype mismatch too).
                self._lstm_kernel_checks(hx)
                if data.dim() != 2 or data.size(-1) != self.input_size:
                    raise RuntimeError(
                        f"input.size(-1) must be equal to input_size. Expected "
                        f"{self.input_size}, got {data.size(-1)}")
                self.check_hidden_size(hx[0], self.get_expected_hidden_size(data, batch_sizes))
                self.check_hidden_size(hx[1], self.get_expected_cell_size(data, batch_sizes))
            else:
                self.check_forward_args(data, hx, batch_sizes)
            states = self._as_tuple(hx)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not batched:
                input = input.unsqueeze(batch_dim)
            if hx is not None:
                # Only the first two tensors count for LSTM, read as torch.nn reads them
                # (hx[0], hx[1]: a lone tensor with one layer is an IndexError there).
                given = (hx[0], hx[1]) if lstm else (hx,)
                want = 3 if batched else 2
                if any(h.dim() != want for h in given):
                    dims = ", ".join(f"{h.dim()}-D" for h in given)
                    kind = "batched 3-D" if batched else "unbatched 2-D"
                    raise RuntimeError(
                        f"For {kind} input, hx should also be {want}-D but got ({dims}) tensor(s)")
                if not batched:
                    hx = self._from_tuple(tuple(h.unsqueeze(1) for h in given))
            batch_sizes, sorted_indices, unsorted_indices = None, None, None
            data = input.transpose(0, 1) if self.batch_first else input
            if data.shape[0] == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            if hx is None:
                states = self._zero_states(data, data.shape[1])
                hx = self._from_tuple(states)
            self.check_forward_args(input, hx, None)
            if lstm:
                self._lstm_kernel_checks(hx)
            states = self._as_tuple(hx)
        if lstm:
            states = self._lstm_cell_state_dtype(states, data)
        if reset is not None:
            reset = self._reset_rows(reset, data, batch_sizes, sorted_indices, batched)

        # The ops' backwards file their gradient norms under this call of this module when a
        # gatedrnn.grad_norms() recorder is active.
        outer = monitor.begin(self, self.num_layers * (2 if self.bidirectional else 1))
        return_states = getattr(self, "return_states", False)
        try:
            output, finals, *every = F.stacked(
                self._stacked_mode or self._mode, data, states, self._layer_weights(),
                num_layers=self.num_layers, bidirectional=self.bidirectional,
                batch_sizes=batch_sizes, dropout=self.dropout, training=self.training,
                nonlinearity=getattr(self, "nonlinearity", "tanh"),
                regularizers=self._regularizer_rates(), residual=getattr(self, "residual", False),
                recurrent_grad_clip=getattr(self, "recurrent_grad_clip", 0.0),
                return_states=return_states, reset=reset)
        finally:
            monitor.end(outer)
        hidden = self._from_tuple(finals)
        if packed:
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            hidden = self.permute_hidden(hidden, unsorted_indices)
        else:
            if self.batch_first:
                output = output.transpose(0, 1)
            if not batched:
                output = output.squeeze(0 if self.batch_first else 1)
                hidden = self._from_tuple(tuple(h.squeeze(1) for h in finals))
        if not return_states:
            return output, hidden
        return output, hidden, {k: self._states_like_output(v, batch_sizes, sorted_indices,
                                                            unsorted_indices, batched)
                                for k, v in every[0].items()}

    def _plain_forward(self, input, hx):
        """forward() of a padded batch (3-D input) for a module with none of gatedrnn's
        options, straight to functional's plain form: a decoder's one-step calls are mostly
        Python (a 2-layer GRU at hidden size 8 under no_grad, loops of calls: 89-97 -> 82 us
        a call with plain_stacked's change, torch.nn's 97-104 in that run, its two ops' 22-27;
        Intel Xeon). Returns None where it does not apply, and where an op refuses the call:
        forward's full form then runs, with torch.nn's checks and errors (the ops check every
        size, dtype and device themselves; torch.nn's checks of what they cannot see are made
        here: the states' layer count, an empty sequence)."""
        if (self._stacked_mode or input.dim() != 3 or torch._C._get_tracing_state() is not None
                or torch.compiler.is_compiling() or getattr(self, "return_states", False)
                or getattr(self, "residual", False) or getattr(self, "recurrent_grad_clip", 0.0)):
            return None
        for name in self._regularizers:
            if getattr(self, name, 0):
                return None
        data = input.transpose(0, 1) if self.batch_first else input
        nonlinearity = getattr(self, "nonlinearity", "tanh")
        if data.shape[0] == 0 or not F.as_it_is(self._mode, data, nonlinearity):
            return None
        lstm = self._mode == "LSTM"
        slots = self.num_layers * (2 if self.bidirectional else 1)
        if hx is None:
            states = self._zero_states(data, data.shape[1])
        elif lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                return None
            states = (hx[0], hx[1])
        else:
            states = (hx,)
        for state in states:
            if type(state) is not torch.Tensor or state.dim() != 3 or state.shape[0] != slots:
                return None
        if lstm and self._lstm_cell_state_dtype(states, data) is not states:
            return None  # the full form converts c_0
        # The ops' backwards file their norms under this call (forward's full form); with
        # gradients off there will be none.
        tagged = torch.is_grad_enabled()
        outer = monitor.begin(self, slots) if tagged else None
        try:
            output, finals = F.plain_stacked(
                self._mode, data, states, self._layer_weights(), self.num_layers,
                self.bidirectional, self.dropout, self.training, nonlinearity)
        except (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError):
            return None
        finally:
            if tagged:
                monitor.end(outer)
        return (output.transpose(0, 1) if self.batch_first else output,
                finals if lstm else finals[0])

    def _reset_rows(self, reset, data, batch_sizes, sorted_indices, batched):
        """forward's reset mask as functional.stacked takes it: [T, N] for padded data, a
        flag per packed row for packed data. ValueError naming reset for a mask of another
        dtype or shape."""
        if self.bidirectional:
            raise ValueError("reset: per-step resets are for unidirectional modules (a reverse "
                             "direction has no previous step to restart from)")
        F.check_reset_dtype(reset)
        if batch_sizes is not None:
            T, N = batch_sizes.numel(), int(batch_sizes[0])
            expected, layout = (T, N), "[T, N]"
        elif not batched:
            expected, layout = (data.shape[0],), "[T]"
        elif self.batch_first:
            expected, layout = (data.shape[1], data.shape[0]), "[N, T] (batch_first)"
        else:
            expected, layout = tuple(data.shape[:2]), "[T, N]"
        if tuple(reset.shape) != expected:
            raise ValueError(f"reset: expected a mask of shape {layout} = {expected}, got "
                             f"{tuple(reset.shape)}")
        reset = reset.cpu()  # the ops take their flags on the CPU, as batch_sizes
        if batch_sizes is None:
            return reset.unsqueeze(1) if not batched else (reset.t() if self.batch_first else reset)
        if sorted_indices is not None:
            reset = reset[:, sorted_indices.cpu()]
        live = torch.arange(N) < batch_sizes[:, None]
        return reset[live]  # packed order: step by step, each step's live sequences

    def _states_like_output(self, states, batch_sizes, sorted_indices, unsorted_indices,
                            batched):
        """Every step's states of one kind, [L*D, T, N, *] ([L*D, R, *] packed), laid out as
        the output is: [L*D, N, T, *] with batch_first, [L*D, T, *] unbatched, and for packed
        input a PackedSequence like the output's whose data is [R, L*D, *]."""
        if batch_sizes is not None:
            return PackedSequence(states.transpose(0, 1), batch_sizes, sorted_indices,
                                  unsorted_indices)
        if self.batch_first:
            states = states.transpose(1, 2)
        if not batched:
            states = states.squeeze(1 if self.batch_first else 2)
        return states

    def _onnx_forward(self, input, hx):
        """Under torch.onnx.export: torch.nn's forward, which the exporters turn into ONNX's
        own LSTM / GRU / RNN nodes, so any ONNX runtime runs the model with no custom
        domain. ONNX's LSTM has no projection; torch's TorchScript-based exporter refuses
        one, and its dynamo exporter (2.13) writes an LSTM node without it, whose state
        shapes onnxruntime rejects, so a projection is refused here for both."""
        if getattr(self, "proj_size", 0) > 0:
            raise RuntimeError(f"proj_size={self.proj_size}: {PROJECTION_NOT_IN_ONNX}")
        self._check_twin_is_exact("ONNX export")
        return self._as_torch_nn().forward(input, hx)
