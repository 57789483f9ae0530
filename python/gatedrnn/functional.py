"""Functional API over the torch.ops.gatedrnn ops.

Single layer, single direction: lstm, gru, rnn, and the layer-normalized cells
layer_norm_lstm, layer_norm_gru (reference.py has their math). Shapes (T steps, N batch, I input
features, H hidden size, P = proj_size or H):
  input        [T, N, I] padded, or packed data [R, I] with batch_sizes [T] (int64, CPU)
  hx           lstm: (h0 [N, P], c0 [N, H]); gru/rnn: h0 [N, H]; None means zeros
  returns      output [T, N, P] or [R, P] and the final state(s) in hx's layout

stacked() runs several layers and both directions over the same ops; the
modules build on it.
"""
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _build_info
from . import _C  # noqa: F401  (defines the op schemas)
from . import ops  # noqa: F401  (fake kernels and autograd)

__all__ = ["lstm", "gru", "rnn", "layer_norm_lstm", "layer_norm_gru", "stacked"]


def _batch(input: Tensor, batch_sizes: Optional[Tensor]) -> int:
    if batch_sizes is not None:
        return int(batch_sizes[0]) if batch_sizes.numel() > 0 else 0
    if input.dim() != 3:
        raise ValueError(
            f"input: expected a padded [T, N, input_size] tensor when batch_sizes is None, "
            f"got shape {tuple(input.shape)}")
    return input.shape[1]


def _check_device(input: Tensor) -> None:
    """A build without the CUDA kernels says why, rather than the dispatcher's list of
    backends (a build on a machine without a matching CUDA toolkit makes only the CPU ones)."""
    if input.device.type == "cuda" and not _build_info.cuda:
        raise RuntimeError(
            f"input is on {input.device}, but this build of gatedrnn has no CUDA kernels: "
            f"{_build_info.cuda_skipped}. Rebuild it with a CUDA toolkit whose major version "
            f"matches torch's CUDA ({torch.version.cuda}), e.g. CUDA_HOME=/usr/local/cuda "
            "pip install --no-build-isolation --force-reinstall --no-deps <the gatedrnn "
            "source folder>")


def _zeros(input: Tensor, batch: int, size: int) -> Tensor:
    return torch.zeros(batch, size, dtype=input.dtype, device=input.device)


# torch.nn runs bfloat16 and float16 on the CPU. The CPU ops take bfloat16 themselves
# (their GEMMs on AMX or AVX512_BF16 where the CPU has them, cpu/gemm.h), rounding as
# torch.nn's oneDNN kernels do. float16 they do not: it is computed in float32 from the
# values as given and each result rounded once (so our error against a float64 reference
# is at most torch.nn's, which rounds at every step: tests/test_reduced_precision.py).
# Nor does the ReLU RNN run in bfloat16: where rounding puts a pre-activation on the other
# side of 0 than exact arithmetic does, a whole gradient entry changes, so two bfloat16
# computations that round in different places differ by that much (measured: up to 36x
# torch.nn's error against float64 in a gradient, 2 layers, where float32 inside stays
# within it); computed in float32 it flips only where torch.nn's own rounding would.
# The CUDA kernels take both dtypes themselves.
_COMPUTED_IN_FLOAT32 = (torch.float16,)


def _computed_in_float32(input: Tensor, bf16: bool = False) -> bool:
    return input.device.type == "cpu" and (
        input.dtype in _COMPUTED_IN_FLOAT32 or (bf16 and input.dtype == torch.bfloat16))


def _in_float32(op: str, input: Tensor, tensors: dict, bf16: bool = False):
    """(input, tensors) as float32 copies if input is a CPU tensor of a dtype computed in
    float32 (float16; bfloat16 too where bf16: the ReLU RNN, the layer-normalized cells),
    else None. Every tensor must have input's dtype, as the ops require."""
    if not _computed_in_float32(input, bf16):
        return None
    for name, t in tensors.items():
        if t is not None and t.dtype != input.dtype:
            if torch.is_autocast_enabled("cpu"):
                # Under autocast the ops' autocast kernels cast every argument, as torch.nn
                # does (ops/_common.py): a stacked layer's input is then in the autocast
                # dtype, its states and weights are not.
                return None
            raise RuntimeError(f"gatedrnn.{op}: expected {name} to have dtype {input.dtype} "
                               f"(the dtype of input), got {t.dtype}")
    return input.float(), {n: None if t is None else t.float() for n, t in tensors.items()}


def _needs_grad(*tensors) -> bool:
    """Whether autograd may differentiate the op: if not, the forward keeps no workspace
    (the per-step activations only a backward reads). Under torch.jit.trace always: the
    answer would be frozen into the trace as a constant, so a graph traced under no_grad
    could not be differentiated, and trace's check, which re-traces under no_grad, would
    find two graphs."""
    if torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _call(op, needs_grad: bool, batch_sizes: Optional[Tensor], *args):
    """op(*args), below its Autograd kernel where that kernel has nothing to do: no
    gradient to record, nothing tracing or transforming the call, no batch_sizes to check
    (ops/_common.py). That kernel is Python, so a call through it turns every argument
    into a Python object and back; a one-step call (a decoder's, a cell's) spent ~5 us of
    its ~16 us of overhead there."""
    if (needs_grad or batch_sizes is not None or torch.compiler.is_compiling()
            or torch._C._are_functorch_transforms_active()):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def lstm(input: Tensor, hx=None, *, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
         b_hh: Optional[Tensor] = None, w_hr: Optional[Tensor] = None,
         batch_sizes: Optional[Tensor] = None, reverse: bool = False):
    """One LSTM layer in one direction. Returns (output, (h_n, c_n))."""
    _check_device(input)
    if hx is None:
        batch = _batch(input, batch_sizes)
        hidden = w_ih.shape[0] // 4
        hx = (_zeros(input, batch, w_hh.shape[1]), _zeros(input, batch, hidden))
    h0, c0 = hx
    widened = _in_float32("lstm_forward", input, dict(h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh,
                                                      b_ih=b_ih, b_hh=b_hh, w_hr=w_hr))
    if widened is not None:
        x, a = widened
        output, (h_n, c_n) = lstm(x, (a.pop("h0"), a.pop("c0")), **a, batch_sizes=batch_sizes,
                                  reverse=reverse)
        return output.to(input.dtype), (h_n.to(input.dtype), c_n.to(input.dtype))
    needs_grad = _needs_grad(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    output, h_n, c_n, _ = _call(torch.ops.gatedrnn.lstm_forward, needs_grad, batch_sizes,
                                input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                reverse, needs_grad)
    return output, (h_n, c_n)


def gru(input: Tensor, hx: Optional[Tensor] = None, *, w_ih: Tensor, w_hh: Tensor,
        b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
        batch_sizes: Optional[Tensor] = None, reverse: bool = False):
    """One GRU layer in one direction. Returns (output, h_n)."""
    _check_device(input)
    if hx is None:
        hx = _zeros(input, _batch(input, batch_sizes), w_hh.shape[1])
    widened = _in_float32("gru_forward", input, dict(h0=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                                                     b_hh=b_hh))
    if widened is not None:
        x, a = widened
        output, h_n = gru(x, a.pop("h0"), **a, batch_sizes=batch_sizes, reverse=reverse)
        return output.to(input.dtype), h_n.to(input.dtype)
    needs_grad = _needs_grad(input, hx, w_ih, w_hh, b_ih, b_hh)
    output, h_n, _ = _call(torch.ops.gatedrnn.gru_forward, needs_grad, batch_sizes, input,
                           batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, needs_grad)
    return output, h_n


def rnn(input: Tensor, hx: Optional[Tensor] = None, *, w_ih: Tensor, w_hh: Tensor,
        b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
        nonlinearity: str = "tanh", batch_sizes: Optional[Tensor] = None,
        reverse: bool = False):
    """One Elman RNN layer (tanh or relu) in one direction. Returns (output, h_n)."""
    _check_device(input)
    if hx is None:
        hx = _zeros(input, _batch(input, batch_sizes), w_hh.shape[1])
    widened = _in_float32("rnn_forward", input, dict(h0=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                                                     b_hh=b_hh), bf16=nonlinearity == "relu")
    if widened is not None:
        x, a = widened
        output, h_n = rnn(x, a.pop("h0"), **a, nonlinearity=nonlinearity,
                          batch_sizes=batch_sizes, reverse=reverse)
        return output.to(input.dtype), h_n.to(input.dtype)
    return _call(torch.ops.gatedrnn.rnn_forward,
                 _needs_grad(input, hx, w_ih, w_hh, b_ih, b_hh), batch_sizes,
                 input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse)


def _layer_norm_arguments(op: str, input: Tensor, tensors: dict):
    """The layer-normalized cells' checks and casts, before their ops: CPU only; under
    autocast every float tensor in the weights' dtype (their LayerNorms run in float32,
    as torch.nn.LayerNorm does under autocast)."""
    if input.device.type != "cpu":
        raise RuntimeError(f"gatedrnn.{op}: input is on {input.device}; the layer-normalized "
                           f"cells have CPU kernels only so far")
    if torch.is_autocast_enabled("cpu"):
        dtype = tensors["w_ih"].dtype
        input = input.to(dtype) if input.is_floating_point() else input
        tensors = {n: t.to(dtype) if t is not None and t.is_floating_point() else t
                   for n, t in tensors.items()}
    return input, tensors


def layer_norm_lstm(input: Tensor, hx=None, *, w_ih: Tensor, w_hh: Tensor,
                    b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
                    ln_ih_weight: Tensor, ln_ih_bias: Optional[Tensor] = None,
                    ln_hh_weight: Tensor, ln_hh_bias: Optional[Tensor] = None,
                    ln_cell_weight: Tensor, ln_cell_bias: Optional[Tensor] = None,
                    batch_sizes: Optional[Tensor] = None, reverse: bool = False):
    """One layer-normalized LSTM layer in one direction (Ba et al. 2016; reference.py):
    gates = LN_ih(x W_ih^T) + LN_hh(h W_hh^T) + b_ih + b_hh, each LN over all 4H gates with
    gain ln_*_weight and shift ln_*_bias (None: no shift), c' = s(f) c + s(i) tanh(g),
    h' = s(o) tanh(LN_cell(c')). Returns (output, (h_n, c_n)). float16 and bfloat16 on the
    CPU are computed in float32."""
    if hx is None:
        batch = _batch(input, batch_sizes)
        hidden = w_ih.shape[0] // 4
        hx = (_zeros(input, batch, hidden), _zeros(input, batch, hidden))
    op = "layer_norm_lstm_forward"
    input, a = _layer_norm_arguments(op, input, dict(
        h0=hx[0], c0=hx[1], w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
        ln_ih_weight=ln_ih_weight, ln_ih_bias=ln_ih_bias, ln_hh_weight=ln_hh_weight,
        ln_hh_bias=ln_hh_bias, ln_cell_weight=ln_cell_weight, ln_cell_bias=ln_cell_bias))
    widened = _in_float32(op, input, a, bf16=True)
    if widened is not None:
        x, w = widened
        output, (h_n, c_n) = layer_norm_lstm(x, (w.pop("h0"), w.pop("c0")), **w,
                                             batch_sizes=batch_sizes, reverse=reverse)
        return output.to(input.dtype), (h_n.to(input.dtype), c_n.to(input.dtype))
    needs_grad = _needs_grad(input, *a.values())
    output, h_n, c_n, _ = _call(torch.ops.gatedrnn.layer_norm_lstm_forward, needs_grad,
                                batch_sizes, input, batch_sizes, *a.values(), reverse,
                                needs_grad)
    return output, (h_n, c_n)


def layer_norm_gru(input: Tensor, hx: Optional[Tensor] = None, *, w_ih: Tensor, w_hh: Tensor,
                   b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
                   ln_ih_weight: Tensor, ln_ih_bias: Optional[Tensor] = None,
                   ln_hh_weight: Tensor, ln_hh_bias: Optional[Tensor] = None,
                   batch_sizes: Optional[Tensor] = None, reverse: bool = False):
    """One layer-normalized GRU layer in one direction (reference.py): gx = LN_ih(x W_ih^T)
    + b_ih, gh = LN_hh(h W_hh^T) + b_hh, each LN over all 3H gates, then torch.nn.GRU's
    r, z, n and h' from gx and gh. Returns (output, h_n). float16 and bfloat16 on the CPU
    are computed in float32."""
    if hx is None:
        hx = _zeros(input, _batch(input, batch_sizes), w_ih.shape[0] // 3)
    op = "layer_norm_gru_forward"
    input, a = _layer_norm_arguments(op, input, dict(
        h0=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, ln_ih_weight=ln_ih_weight,
        ln_ih_bias=ln_ih_bias, ln_hh_weight=ln_hh_weight, ln_hh_bias=ln_hh_bias))
    widened = _in_float32(op, input, a, bf16=True)
    if widened is not None:
        x, w = widened
        output, h_n = layer_norm_gru(x, w.pop("h0"), **w, batch_sizes=batch_sizes,
                                     reverse=reverse)
        return output.to(input.dtype), h_n.to(input.dtype)
    needs_grad = _needs_grad(input, *a.values())
    output, h_n, _ = _call(torch.ops.gatedrnn.layer_norm_gru_forward, needs_grad, batch_sizes,
                           input, batch_sizes, *a.values(), reverse, needs_grad)
    return output, h_n


_NORM_NAMES = {"LayerNormLSTM": ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias",
                                 "ln_cell_weight", "ln_cell_bias"),
               "LayerNormGRU": ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias")}


def _run_layer(mode: str, input, batch_sizes, states, weights, reverse, nonlinearity):
    """One layer-direction; states is a tuple of [N, *] tensors, returns (output, states)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights[:5]
    if mode in _NORM_NAMES:
        norms = dict(zip(_NORM_NAMES[mode], weights[5]))
        if mode == "LayerNormLSTM":
            out, (h, c) = layer_norm_lstm(input, states, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                                          b_hh=b_hh, **norms, batch_sizes=batch_sizes,
                                          reverse=reverse)
            return out, (h, c)
        out, h = layer_norm_gru(input, states[0], w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                                **norms, batch_sizes=batch_sizes, reverse=reverse)
        return out, (h,)
    if mode == "LSTM":
        out, (h, c) = lstm(input, states, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                           w_hr=w_hr, batch_sizes=batch_sizes, reverse=reverse)
        return out, (h, c)
    if mode == "GRU":
        out, h = gru(input, states[0], w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                     batch_sizes=batch_sizes, reverse=reverse)
    else:
        out, h = rnn(input, states[0], w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                     nonlinearity=nonlinearity, batch_sizes=batch_sizes, reverse=reverse)
    return out, (h,)


def stacked(mode: str, input: Tensor, states: Sequence[Tensor], weights, *, num_layers: int,
            bidirectional: bool, batch_sizes: Optional[Tensor] = None, dropout: float = 0.0,
            training: bool = False, nonlinearity: str = "tanh"):
    """Multi-layer, optionally bidirectional network over the single-layer ops.

    mode: "LSTM", "GRU", "RNN", "LayerNormLSTM" or "LayerNormGRU". input: [T, N, I] or
    packed [R, I] with batch_sizes.
    states: per state kind (h, and c for LSTM), a [num_layers * num_directions, N, *] tensor.
    weights: per layer-direction (layer-major, forward first), the tuple
      (w_ih, w_hh, b_ih, b_hh, w_hr) with None for absent ones; the layer-normalized cells
      add a sixth entry, the tuple of their LayerNorms' gains and shifts in the order of
      layer_norm_lstm's (layer_norm_gru's) keyword arguments.
    Dropout (training only) is applied to the output of every layer but the last.
    Returns (output, final states shaped like states).
    """
    # float16 (and the ReLU RNN's bfloat16) on the CPU: widened once here rather than per
    # layer, so the layers pass float32 to each other and only the results are rounded.
    # (Rounded between layers, a ReLU pre-activation near 0 can change sign, and with it a
    # whole gradient entry: seen in tests/test_reduced_precision.py.)
    # The layer-normalized cells widen bfloat16 too (their ops take float32 and float64).
    named = {f"states[{k}]": s for k, s in enumerate(states)}
    for index, layer_weights in enumerate(weights):
        names = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr") + _NORM_NAMES.get(mode, ())
        flat = tuple(layer_weights[:5]) + tuple(layer_weights[5] if len(layer_weights) > 5 else ())
        named.update({f"{name} of layer-direction {index}": w for name, w in zip(names, flat)})
    widened = _in_float32(mode, input, named,
                          bf16=(mode == "RNN" and nonlinearity == "relu") or mode in _NORM_NAMES)
    if widened is not None:
        x, a = widened
        wide = list(a.values())
        per = 5 + len(_NORM_NAMES.get(mode, ()))

        def layer(i):
            w = wide[len(states) + per * i:len(states) + per * (i + 1)]
            return tuple(w) if per == 5 else (*w[:5], tuple(w[5:]))

        output, finals = stacked(
            mode, x, wide[:len(states)], [layer(i) for i in range(len(weights))],
            num_layers=num_layers, bidirectional=bidirectional, batch_sizes=batch_sizes,
            dropout=dropout, training=training, nonlinearity=nonlinearity)
        return output.to(input.dtype), tuple(f.to(input.dtype) for f in finals)
    directions = 2 if bidirectional else 1
    finals = [[] for _ in states]
    layer_input = input
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            out, final = _run_layer(mode, layer_input, batch_sizes,
                                    tuple(s[index] for s in states), weights[index],
                                    direction == 1, nonlinearity)
            outputs.append(out)
            for kind, state in enumerate(final):
                finals[kind].append(state)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = torch.nn.functional.dropout(layer_input, p=dropout, training=True)
    return layer_input, tuple(torch.stack(f, 0) for f in finals)
