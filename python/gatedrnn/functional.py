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
import contextlib
import functools
import math
import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _build_info, monitor
from . import _C  # noqa: F401  (defines the op schemas)
from . import ops  # noqa: F401  (fake kernels and autograd)
from .ops.layer_norm_lstm import CELL_STATE_COLUMNS as LAYER_NORM_LSTM_CELL_COLUMNS
from .ops.lstm import CELL_STATE_COLUMNS as LSTM_CELL_COLUMNS

__all__ = ["lstm", "gru", "rnn", "layer_norm_lstm", "layer_norm_gru", "stacked", "REGULARIZERS",
           "masks_from"]


def _batch(input: Tensor, batch_sizes: Optional[Tensor]) -> int:
    if batch_sizes is not None:
        return int(batch_sizes[0]) if batch_sizes.numel() > 0 else 0
    if input.dim() != 3:
        raise ValueError(
            f"input: expected a padded [T, N, input_size] tensor when batch_sizes is None, "
            f"got shape {tuple(input.shape)}")
    return input.shape[1]


def check_device(input: Tensor) -> None:
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
# The input dtypes some ops compute in float32 (_computed_in_float32 says which, where)
_NOT_AS_THEY_ARE = (torch.float16, torch.bfloat16)
_OPS = torch.ops.gatedrnn


def _computed_in_float32(input: Tensor, bf16: bool = False,
                         devices: tuple = ("cpu",)) -> bool:
    return input.device.type in devices and (
        input.dtype in _COMPUTED_IN_FLOAT32 or (bf16 and input.dtype == torch.bfloat16))


def _in_float32(op: str, input: Tensor, tensors: dict, bf16: bool = False,
                devices: tuple = ("cpu",)):
    """(input, tensors) as float32 copies if input is a tensor of a dtype computed in
    float32 (float16; bfloat16 too where bf16: the ReLU RNN, the layer-normalized cells) on
    one of `devices` (the CPU; the row-wise ops' CUDA kernels too), else None. Every tensor
    must have input's dtype, as the ops require."""
    if not _computed_in_float32(input, bf16, devices):
        return None
    for name, t in tensors.items():
        if t is not None and t.dtype != input.dtype:
            if torch.is_autocast_enabled(input.device.type):
                # Under autocast the ops' autocast kernels cast every argument, as torch.nn
                # does (ops/_common.py): a stacked layer's input is then in the autocast
                # dtype, its states and weights are not.
                return None
            raise RuntimeError(f"gatedrnn.{op}: expected {name} to have dtype {input.dtype} "
                               f"(the dtype of input), got {t.dtype}")
    return input.float(), {n: None if t is None else t.float() for n, t in tensors.items()}


def in_onnx_export() -> bool:
    """torch.onnx.is_in_onnx_export(), asked only where an exporter can be running: both
    exporters trace (torch.jit's tracer, or torch.export, which sets is_compiling), and the
    question itself costs ~0.9 us against ~0.1 for these two."""
    return ((torch._C._get_tracing_state() is not None or torch.compiler.is_compiling())
            and torch.onnx.is_in_onnx_export())


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


def check_reset_dtype(reset) -> None:
    """ValueError unless reset is a bool tensor."""
    if not isinstance(reset, Tensor) or reset.dtype != torch.bool:
        got = reset.dtype if isinstance(reset, Tensor) else type(reset).__name__
        raise ValueError(f"reset: expected a bool tensor, got {got}")


def reset_rows(reset: Optional[Tensor], input: Tensor) -> Optional[Tensor]:
    """The per-step resets of a single-layer op call as the ops take them: reset is a bool
    tensor with a flag per input row, [T, N] for padded input [T, N, I] and [R] for packed
    data [R, I]; a flagged row's sequence restarts from its initial state (hx, or zeros) at
    that step. ValueError for another dtype, shape or device."""
    if reset is None:
        return None
    check_reset_dtype(reset)
    if tuple(reset.shape) != tuple(input.shape[:-1]):
        raise ValueError(f"reset: expected a flag per input row, of shape "
                         f"{tuple(input.shape[:-1])}, got {tuple(reset.shape)}")
    # on the CPU, as the ops take it (as batch_sizes); a CUDA op copies it to its device
    return reset.reshape(-1).cpu().contiguous()


def _given(reset: Optional[Tensor]) -> tuple:
    """The ops' trailing reset argument: left out when there is none."""
    return () if reset is None else (reset,)


def _narrowed(result, dtype):
    """An LSTM layer's (output, (h_n, c_n)[, cell_states]) computed in float32, in dtype."""
    output, (h_n, c_n) = result[:2]
    narrowed = (output.to(dtype), (h_n.to(dtype), c_n.to(dtype)))
    return narrowed + ((result[2].to(dtype),) if len(result) > 2 else ())


def _cell_states(workspace: Tensor, output: Tensor, columns) -> Tensor:
    """The cell states an LSTM op's workspace keeps, in the output's layout and dtype (the
    workspace is float32 for bfloat16 ops)."""
    start, hidden = columns
    states = workspace[:, start:start + hidden]
    if output.dim() == 3:
        states = states.view(output.shape[0], output.shape[1], hidden)
    return states.to(output.dtype)


# The op calls of one layer-direction, written once for lstm() / gru() / rnn() and for
# stacked()'s plain path. weights: (w_ih, w_hh, b_ih, b_hh[, w_hr]); flags: reset_rows'.
def _lstm_call(input, batch_sizes, h0, c0, weights, reverse, needs_grad, keep_workspace,
               flags):
    w_ih, w_hh, b_ih, b_hh, w_hr = weights[:5]
    return _call(torch.ops.gatedrnn.lstm_forward, needs_grad, batch_sizes, input, batch_sizes,
                 h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, keep_workspace,
                 *_given(flags))


def _gru_call(input, batch_sizes, h0, weights, reverse, needs_grad, flags):
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    return _call(torch.ops.gatedrnn.gru_forward, needs_grad, batch_sizes, input, batch_sizes,
                 h0, w_ih, w_hh, b_ih, b_hh, reverse, needs_grad, *_given(flags))


def _rnn_call(input, batch_sizes, h0, weights, nonlinearity, reverse, needs_grad, grad_clip,
              flags):
    # grad_clip only when set, and None by default: under torch.compile(dynamic=True) a
    # float default or argument becomes a symbol, for which Dynamo restarts its analysis
    # (another frame).
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    return _call(torch.ops.gatedrnn.rnn_forward, needs_grad, batch_sizes, input, batch_sizes,
                 h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse,
                 *((float(grad_clip or 0.0),) if grad_clip or flags is not None else ()),
                 *_given(flags))


def lstm(input: Tensor, hx=None, *, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
         b_hh: Optional[Tensor] = None, w_hr: Optional[Tensor] = None,
         batch_sizes: Optional[Tensor] = None, reverse: bool = False,
         return_cell_states: bool = False, reset: Optional[Tensor] = None):
    """One LSTM layer in one direction. Returns (output, (h_n, c_n)), and with
    return_cell_states the cell state after every step, laid out like output (a
    differentiable view of the op's workspace): (output, (h_n, c_n), cell_states).
    reset: per-step resets (reset_rows)."""
    flags = reset_rows(reset, input)
    check_device(input)
    if hx is None:
        batch = _batch(input, batch_sizes)
        hidden = w_ih.shape[0] // 4
        hx = (_zeros(input, batch, w_hh.shape[1]), _zeros(input, batch, hidden))
    h0, c0 = hx
    widened = _in_float32("lstm_forward", input, dict(h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh,
                                                      b_ih=b_ih, b_hh=b_hh, w_hr=w_hr))
    if widened is not None:
        x, a = widened
        result = lstm(x, (a.pop("h0"), a.pop("c0")), **a, batch_sizes=batch_sizes,
                      reverse=reverse, return_cell_states=return_cell_states,
                      reset=reset)
        return _narrowed(result, input.dtype)
    needs_grad = _needs_grad(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    output, h_n, c_n, workspace = _lstm_call(input, batch_sizes, h0, c0,
                                             (w_ih, w_hh, b_ih, b_hh, w_hr), reverse, needs_grad,
                                             needs_grad or return_cell_states, flags)
    if return_cell_states:
        return output, (h_n, c_n), _cell_states(workspace, output,
                                                LSTM_CELL_COLUMNS(w_hh, workspace))
    return output, (h_n, c_n)


def gru(input: Tensor, hx: Optional[Tensor] = None, *, w_ih: Tensor, w_hh: Tensor,
        b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
        batch_sizes: Optional[Tensor] = None, reverse: bool = False,
        reset: Optional[Tensor] = None):
    """One GRU layer in one direction. Returns (output, h_n). reset: per-step resets
    (reset_rows)."""
    flags = reset_rows(reset, input)
    check_device(input)
    if hx is None:
        hx = _zeros(input, _batch(input, batch_sizes), w_hh.shape[1])
    widened = _in_float32("gru_forward", input, dict(h0=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                                                     b_hh=b_hh))
    if widened is not None:
        x, a = widened
        output, h_n = gru(x, a.pop("h0"), **a, batch_sizes=batch_sizes, reverse=reverse,
                          reset=reset)
        return output.to(input.dtype), h_n.to(input.dtype)
    output, h_n, _ = _gru_call(input, batch_sizes, hx, (w_ih, w_hh, b_ih, b_hh), reverse,
                               _needs_grad(input, hx, w_ih, w_hh, b_ih, b_hh), flags)
    return output, h_n


def rnn(input: Tensor, hx: Optional[Tensor] = None, *, w_ih: Tensor, w_hh: Tensor,
        b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
        nonlinearity: str = "tanh", batch_sizes: Optional[Tensor] = None,
        reverse: bool = False, grad_clip: Optional[float] = None,
        reset: Optional[Tensor] = None):
    """One Elman RNN layer (tanh or relu) in one direction. Returns (output, h_n). grad_clip
    > 0 clamps the gradient of every step's pre-activations to [-grad_clip, grad_clip] in
    the backward (Graves 2013); None or 0: off. reset: per-step resets (reset_rows)."""
    flags = reset_rows(reset, input)
    check_device(input)
    if hx is None:
        hx = _zeros(input, _batch(input, batch_sizes), w_hh.shape[1])
    widened = _in_float32("rnn_forward", input, dict(h0=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                                                     b_hh=b_hh), bf16=nonlinearity == "relu")
    if widened is not None:
        x, a = widened
        output, h_n = rnn(x, a.pop("h0"), **a, nonlinearity=nonlinearity,
                          batch_sizes=batch_sizes, reverse=reverse, grad_clip=grad_clip,
                          reset=reset)
        return output.to(input.dtype), h_n.to(input.dtype)
    return _rnn_call(input, batch_sizes, hx, (w_ih, w_hh, b_ih, b_hh), nonlinearity, reverse,
                     _needs_grad(input, hx, w_ih, w_hh, b_ih, b_hh), grad_clip, flags)


def _layer_norm_arguments(op: str, input: Tensor, tensors: dict):
    """The row-wise ops' checks and casts, before their ops: CPU (fused kernels) or CUDA
    (the portable ATen implementation); under autocast every float tensor in the weights'
    dtype (their LayerNorms run in float32, as torch.nn.LayerNorm does under autocast)."""
    if input.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"gatedrnn.{op}: input is on {input.device}; the row-wise ops (the "
                           f"layer-normalized cells, and zoneout, variational state dropout "
                           f"and recurrent_grad_clip for the LSTM and GRU) have CPU and CUDA "
                           f"kernels only")
    check_device(input)
    if torch.is_autocast_enabled(input.device.type):
        dtype = tensors["w_ih"].dtype
        input = input.to(dtype) if input.is_floating_point() else input
        tensors = {n: t.to(dtype) if t is not None and t.is_floating_point() else t
                   for n, t in tensors.items()}
    return input, tensors


def layer_norm_lstm(input: Tensor, hx=None, *, w_ih: Tensor, w_hh: Tensor,
                    b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
                    ln_ih_weight: Optional[Tensor] = None, ln_ih_bias: Optional[Tensor] = None,
                    ln_hh_weight: Optional[Tensor] = None, ln_hh_bias: Optional[Tensor] = None,
                    ln_cell_weight: Optional[Tensor] = None,
                    ln_cell_bias: Optional[Tensor] = None, state_mask: Optional[Tensor] = None,
                    zoneout_h: Optional[Tensor] = None, zoneout_c: Optional[Tensor] = None,
                    batch_sizes: Optional[Tensor] = None, reverse: bool = False,
                    grad_clip: float = 0.0, return_cell_states: bool = False,
                    reset: Optional[Tensor] = None):
    """One layer-normalized LSTM layer in one direction (Ba et al. 2016; reference.py):
    gates = LN_ih(x W_ih^T) + LN_hh(h W_hh^T) + b_ih + b_hh, each LN over all 4H gates with
    gain ln_*_weight and shift ln_*_bias (None: no shift), c' = s(f) c + s(i) tanh(g),
    h' = s(o) tanh(LN_cell(c')); a LayerNorm whose gain is None is left out (all: the plain
    LSTM). The regularizers' masks, given as they are (the modules draw them): state_mask
    [N, H] multiplies h where it enters h W_hh^T; zoneout_h, zoneout_c [R, H] (a row per
    input row, R = T*N padded) weight the previous state: h' = d h + (1 - d) h~. grad_clip
    > 0 clamps the gradient of every step's gate pre-activations to [-grad_clip, grad_clip]
    in the backward (Graves 2013). Returns (output, (h_n, c_n)), and with
    return_cell_states the state c' after every step as lstm's. reset: per-step resets
    (reset_rows). float16 and bfloat16 are computed in float32 (CPU and CUDA)."""
    flags = reset_rows(reset, input)
    if hx is None:
        batch = _batch(input, batch_sizes)
        hidden = w_ih.shape[0] // 4
        hx = (_zeros(input, batch, hidden), _zeros(input, batch, hidden))
    op = "layer_norm_lstm_forward"
    input, a = _layer_norm_arguments(op, input, dict(
        h0=hx[0], c0=hx[1], w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
        ln_ih_weight=ln_ih_weight, ln_ih_bias=ln_ih_bias, ln_hh_weight=ln_hh_weight,
        ln_hh_bias=ln_hh_bias, ln_cell_weight=ln_cell_weight, ln_cell_bias=ln_cell_bias,
        state_mask=state_mask, zoneout_h=zoneout_h, zoneout_c=zoneout_c))
    widened = _in_float32(op, input, a, bf16=True, devices=("cpu", "cuda"))
    if widened is not None:
        x, w = widened
        result = layer_norm_lstm(x, (w.pop("h0"), w.pop("c0")), **w, batch_sizes=batch_sizes,
                                 reverse=reverse, grad_clip=grad_clip,
                                 return_cell_states=return_cell_states,
                                 reset=reset)
        return _narrowed(result, input.dtype)
    needs_grad = _needs_grad(input, *a.values())
    output, h_n, c_n, workspace = _call(
        torch.ops.gatedrnn.layer_norm_lstm_forward, needs_grad, batch_sizes, input,
        batch_sizes, *a.values(), reverse, needs_grad or return_cell_states, float(grad_clip),
        *_given(flags))
    if return_cell_states:
        return output, (h_n, c_n), _cell_states(workspace, output,
                                                LAYER_NORM_LSTM_CELL_COLUMNS(a["w_hh"]))
    return output, (h_n, c_n)


def layer_norm_gru(input: Tensor, hx: Optional[Tensor] = None, *, w_ih: Tensor, w_hh: Tensor,
                   b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
                   ln_ih_weight: Optional[Tensor] = None, ln_ih_bias: Optional[Tensor] = None,
                   ln_hh_weight: Optional[Tensor] = None, ln_hh_bias: Optional[Tensor] = None,
                   state_mask: Optional[Tensor] = None, zoneout_h: Optional[Tensor] = None,
                   batch_sizes: Optional[Tensor] = None, reverse: bool = False,
                   grad_clip: float = 0.0, reset: Optional[Tensor] = None):
    """One layer-normalized GRU layer in one direction (reference.py): gx = LN_ih(x W_ih^T)
    + b_ih, gh = LN_hh(h W_hh^T) + b_hh, each LN over all 3H gates, then torch.nn.GRU's
    r, z, n and h' from gx and gh; a LayerNorm whose gain is None is left out (both: the
    plain GRU). Masks, grad_clip and reset as layer_norm_lstm's. Returns (output, h_n).
    float16 and bfloat16 are computed in float32 (CPU and CUDA)."""
    flags = reset_rows(reset, input)
    if hx is None:
        hx = _zeros(input, _batch(input, batch_sizes), w_ih.shape[0] // 3)
    op = "layer_norm_gru_forward"
    input, a = _layer_norm_arguments(op, input, dict(
        h0=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, ln_ih_weight=ln_ih_weight,
        ln_ih_bias=ln_ih_bias, ln_hh_weight=ln_hh_weight, ln_hh_bias=ln_hh_bias,
        state_mask=state_mask, zoneout_h=zoneout_h))
    widened = _in_float32(op, input, a, bf16=True, devices=("cpu", "cuda"))
    if widened is not None:
        x, w = widened
        output, h_n = layer_norm_gru(x, w.pop("h0"), **w, batch_sizes=batch_sizes,
                                     reverse=reverse, grad_clip=grad_clip,
                                     reset=reset)
        return output.to(input.dtype), h_n.to(input.dtype)
    needs_grad = _needs_grad(input, *a.values())
    output, h_n, _ = _call(torch.ops.gatedrnn.layer_norm_gru_forward, needs_grad, batch_sizes,
                           input, batch_sizes, *a.values(), reverse, needs_grad,
                           float(grad_clip), *_given(flags))
    return output, h_n


_NORM_NAMES = {"LayerNormLSTM": ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias",
                                 "ln_cell_weight", "ln_cell_bias"),
               "LayerNormGRU": ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias")}


def _run_layer(mode: str, input, batch_sizes, states, weights, reverse, nonlinearity,
               masks=None, grad_clip=0.0, cell_states=False, reset=None):
    """One layer-direction; states is a tuple of [N, *] tensors, returns (output, states),
    and with cell_states (the LSTMs) (output, states, the cell state after every step).
    masks: the row-wise regularizers' (state_mask, zoneout_h, zoneout_c); where there are
    any, or a grad_clip, the plain LSTM and GRU run on the row-wise ops, without
    LayerNorms."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights[:5]
    if mode in _NORM_NAMES or ((masks or grad_clip) and mode in ("LSTM", "GRU")):
        norms = dict(zip(_NORM_NAMES[mode], weights[5])) if mode in _NORM_NAMES else {}
        masks = dict(masks or {})
        if mode in ("LayerNormLSTM", "LSTM"):
            out, (h, c), *seq = layer_norm_lstm(
                input, states, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, **norms, **masks,
                batch_sizes=batch_sizes, reverse=reverse, grad_clip=grad_clip,
                return_cell_states=cell_states, reset=reset)
            return (out, (h, c), *seq)
        out, h = layer_norm_gru(input, states[0], w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                                **norms, **masks, batch_sizes=batch_sizes, reverse=reverse,
                                grad_clip=grad_clip, reset=reset)
        return out, (h,)
    if mode == "LSTM":
        out, (h, c), *seq = lstm(input, states, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                                 w_hr=w_hr, batch_sizes=batch_sizes, reverse=reverse,
                                 return_cell_states=cell_states, reset=reset)
        return (out, (h, c), *seq)
    if mode == "GRU":
        out, h = gru(input, states[0], w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                     batch_sizes=batch_sizes, reverse=reverse, reset=reset)
    else:
        out, h = rnn(input, states[0], w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                     nonlinearity=nonlinearity, batch_sizes=batch_sizes, reverse=reverse,
                     grad_clip=grad_clip, reset=reset)
    return out, (h,)


REGULARIZERS = ("zoneout", "cell_zoneout", "recurrent_dropconnect",
                "variational_input_dropout", "variational_state_dropout")


def check_rate(name: str, p) -> float:
    """A regularizer's rate: a number in [0, 1), else ValueError (as torch.nn's dropout)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise ValueError(f"{name} probability has to be a number in [0, 1), but got {p!r}")
    return float(p)


def check_grad_clip(c) -> float:
    """recurrent_grad_clip: a finite number >= 0 (0: off), else ValueError."""
    if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 <= c < math.inf:
        raise ValueError(f"recurrent_grad_clip has to be a finite number >= 0 (0: off), "
                         f"but got {c!r}")
    return float(c)


def _per_sequence(mask: Tensor, batch_sizes: Optional[Tensor]) -> Tensor:
    """A per-sequence mask [N, C] laid out to multiply the rows of an input: [N, C] for
    padded [T, N, C] (broadcast over T), one row per packed row for packed data."""
    if batch_sizes is None:
        return mask
    return mask[torch.cat([torch.arange(int(n)) for n in batch_sizes])]


_MASK_SOURCE = None


@contextlib.contextmanager
def masks_from(source):
    """Within the block, every regularizer mask stacked() (and so every module) would draw
    is source(name, shape, p, like) instead: a 0/1 tensor of `shape`, like `like`'s dtype
    and device, 1 where the event of probability p happens (the unit is dropped, or zoned
    out: keeps its previous value). name: "zoneout_h", "zoneout_c", "state_mask",
    "recurrent_dropconnect" or "variational_input_dropout". The way to run with fixed masks
    (tests); outside, masks come from torch's default generator."""
    global _MASK_SOURCE
    previous, _MASK_SOURCE = _MASK_SOURCE, source
    try:
        yield
    finally:
        _MASK_SOURCE = previous


def _draw(name: str, shape, p: float, like: Tensor) -> Tensor:
    """A 0/1 mask, 1 with probability p (masks_from's source where one is set)."""
    if _MASK_SOURCE is not None:
        return _MASK_SOURCE(name, tuple(shape), p, like).to(like.dtype)
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(p)


def _dropout_mask(name: str, shape, p: float, like: Tensor) -> Tensor:
    """Dropout's mask: the kept entries 1 / (1 - p), the dropped 0."""
    return (1 - _draw(name, shape, p, like)) / (1 - p)


def _row_masks(input: Tensor, batch_sizes, hidden: int, rates: dict, training: bool) -> dict:
    """The masks the row-wise ops apply in one layer-direction's time loop: zoneout's per
    step and row (in training drawn, 1 with probability p; in evaluation p itself) and
    the variational state dropout's per sequence (training only)."""
    masks = {}
    if not rates:
        return masks
    rows = input.shape[0] * input.shape[1] if input.dim() == 3 else input.shape[0]
    batch = _batch(input, batch_sizes)
    for name, rate in (("zoneout_h", rates.get("zoneout", 0.0)),
                       ("zoneout_c", rates.get("cell_zoneout", 0.0))):
        if rate > 0:
            masks[name] = (_draw(name, (rows, hidden), rate, input) if training
                           else torch.full((rows, hidden), rate, dtype=input.dtype,
                                           device=input.device))
    rate = rates.get("variational_state_dropout", 0.0)
    if rate > 0 and training:
        masks["state_mask"] = _dropout_mask("state_mask", (batch, hidden), rate, input)
    return masks


_REGULARIZER_NAMES = frozenset(REGULARIZERS)


def _is_zero(value) -> bool:
    """Whether value is an int or float 0 (check_grad_clip's "off"; a bool it refuses)."""
    return type(value) in (int, float) and value == 0


_PLAIN_MODES = ("LSTM", "GRU", "RNN")


def _below_autograd() -> bool:
    """Whether the ops may be called below their Autograd kernel without asking their
    tensors (_call, _needs_grad): gradients off, and nothing tracing or transforming."""
    return not (torch.is_grad_enabled() or torch._C._get_tracing_state() is not None
                or torch.compiler.is_compiling()
                or torch._C._are_functorch_transforms_active())


def _plain_layer(mode, input, states, weights, reverse, nonlinearity, below):
    """One layer-direction's op on padded input, as lstm() / gru() / rnn() call it, without
    their checks of what their callers here cannot pass (resets, batch_sizes, a dtype
    computed in float32, a missing state): states (h, and c for the LSTM) [N, *], weights
    (w_ih, w_hh, b_ih, b_hh[, w_hr]). below: _below_autograd(), the caller having entered
    _AutoDispatchBelowAutograd. Returns (output, final states)."""
    needs_grad = not below and _needs_grad(input, *states, *weights[:5])
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    if mode == "LSTM":
        w_hr = weights[4] if len(weights) > 4 else None
        op, args = _OPS.lstm_forward, (input, None, *states, w_ih, w_hh, b_ih, b_hh, w_hr,
                                       reverse, needs_grad)
    elif mode == "GRU":
        op, args = _OPS.gru_forward, (input, None, states[0], w_ih, w_hh, b_ih, b_hh, reverse,
                                      needs_grad)
    else:
        op, args = _OPS.rnn_forward, (input, None, states[0], w_ih, w_hh, b_ih, b_hh,
                                      nonlinearity, reverse)
    result = op(*args) if below else _call(op, needs_grad, None, *args)
    return result[0], ((result[1], result[2]) if mode == "LSTM" else (result[1],))


def cell_step(mode: str, input: Tensor, states: Sequence[Tensor], weights,
              nonlinearity: str = "tanh"):
    """One step of a cell (modules/cell.py): input [N, I], states (h, and c for the LSTM)
    [N, H], weights (w_ih, w_hh, b_ih, b_hh). Returns the new states. lstm() / gru() /
    rnn() with T = 1 in as few Python steps as can do it, since a small cell's call is
    mostly Python, each step of it 1-2 us in a model's loop (RNNCell at hidden size 8 under
    no_grad, loops of calls: 30-35 -> 24 us a call with the cells' own changes, torch.nn's
    18-20; Intel Xeon). A dtype computed in float32 goes through those functions; the
    device, dtype and size checks are the op's (the cells check again, for torch.nn's
    messages, only once the op has refused)."""
    x = input.unsqueeze(0)
    if x.dtype in _NOT_AS_THEY_ARE and _computed_in_float32(
            x, bf16=mode == "RNN" and nonlinearity == "relu"):
        w_ih, w_hh, b_ih, b_hh = weights
        if mode == "LSTM":
            return lstm(x, tuple(states), w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)[1]
        single = gru if mode == "GRU" else functools.partial(rnn, nonlinearity=nonlinearity)
        return (single(x, states[0], w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)[1],)
    if _below_autograd():
        with torch._C._AutoDispatchBelowAutograd():
            return _new_states(mode, *_plain_layer(mode, x, states, weights, False,
                                                   nonlinearity, True))
    return _new_states(mode, *_plain_layer(mode, x, states, weights, False, nonlinearity,
                                           False))


def _new_states(mode, out, final):
    """cell_step's result from a one-step op's (output, final states). The RNN's new h is
    the output's only step (a view), not h_n: the op saves the output for its backward
    (tanh' and relu' are read from it, as torch.nn's RNNCell saves its result), so h_n
    would be a second copy alive until the backward (5 of 10 MiB saved by a decoder of two
    RNNCells at (N, H) = (64, 512), 20 steps). The LSTM and GRU save no output for one step
    (ops/_common.py, output_to_save) and hand on their final states."""
    return (out.squeeze(0),) if mode == "RNN" else final


def plain_stacked(mode, input, states, weights, num_layers, bidirectional, dropout, training,
                   nonlinearity):
    """stacked() of padded input with none of its options beyond torch.nn's (no
    regularizer, clipping, residual, resets or states of every step), after any widening:
    each layer-direction's op called as lstm() / gru() / rnn() call it (_plain_layer). With
    gradients off, every op below its Autograd kernel in one go and no monitor tags (no
    backward will read them). A one-step call of a 2-layer GRU at hidden size 8, under
    no_grad: the stacked() call 37.9 -> 31.9 us, the module call 54.1 -> 43.5 (torch.nn
    45.2); in loops of such calls, _plain_stacked then 50-56 us against its two ops' 22-27
    (Intel Xeon), before this form and the module's (_base.py, _plain_forward)."""
    check_device(input)
    if _below_autograd():
        with torch._C._AutoDispatchBelowAutograd():
            return _plain_layers(mode, input, states, weights, num_layers, bidirectional,
                                 dropout, training, nonlinearity, True)
    return _plain_layers(mode, input, states, weights, num_layers, bidirectional, dropout,
                         training, nonlinearity, False)


def _plain_layers(mode, input, states, weights, num_layers, bidirectional, dropout, training,
                  nonlinearity, below):
    directions = 2 if bidirectional else 1
    per_slot = [s.unbind(0) for s in states]  # one op per kind of state, not one per slot
    finals = [[] for _ in states]
    layer_input = input
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            if not below:
                monitor.at_slot(index)
            out, final = _plain_layer(mode, layer_input, tuple(s[index] for s in per_slot),
                                      weights[index], direction == 1, nonlinearity, below)
            outputs.append(out)
            for kind, state in enumerate(final):
                finals[kind].append(state)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = torch.nn.functional.dropout(layer_input, p=dropout, training=True)
    return layer_input, tuple(torch.stack(f, 0) for f in finals)


def as_it_is(mode: str, input: Tensor, nonlinearity: str = "tanh") -> bool:
    """Whether stacked() runs input's dtype as it is, rather than widened to float32."""
    return input.dtype not in _NOT_AS_THEY_ARE or not _computed_in_float32(
        input, (mode == "RNN" and nonlinearity == "relu") or mode in _NORM_NAMES)


def stacked(mode: str, input: Tensor, states: Sequence[Tensor], weights, *, num_layers: int,
            bidirectional: bool, batch_sizes: Optional[Tensor] = None, dropout: float = 0.0,
            training: bool = False, nonlinearity: str = "tanh",
            regularizers: Optional[dict] = None, residual: bool = False,
            recurrent_grad_clip: float = 0.0, return_states: bool = False,
            reset: Optional[Tensor] = None):
    """Multi-layer, optionally bidirectional network over the single-layer ops.

    mode: "LSTM", "GRU", "RNN", "LayerNormLSTM" or "LayerNormGRU". input: [T, N, I] or
    packed [R, I] with batch_sizes.
    states: per state kind (h, and c for LSTM), a [num_layers * num_directions, N, *] tensor.
    weights: per layer-direction (layer-major, forward first), the tuple
      (w_ih, w_hh, b_ih, b_hh, w_hr) with None for absent ones; the layer-normalized cells
      add a sixth entry, the tuple of their LayerNorms' gains and shifts in the order of
      layer_norm_lstm's (layer_norm_gru's) keyword arguments.
    Dropout (training only) is applied to the output of every layer but the last.
    regularizers: rates by name (REGULARIZERS; absent or 0: off), for the LSTM, the GRU and
      the layer-normalized cells: zoneout (h) and cell_zoneout (the LSTM's c), in training a
      fresh mask per step, in evaluation p * previous + (1 - p) * new (Krueger et al.
      2016); recurrent_dropconnect, one mask on each w_hh per call, scaled by 1 / (1 - p)
      (Wan et al. 2013, as in AWD-LSTM); variational_input_dropout and
      variational_state_dropout, one mask per sequence and layer on the layer's input, and
      on h where it enters the recurrent GEMM (Gal & Ghahramani 2016). Dropout-like ones
      act in training only. Masks come from torch's default generator (torch.manual_seed
      reproduces a run); layer_norm_lstm / layer_norm_gru take zoneout and state masks as
      given.
    recurrent_grad_clip: > 0 clamps, in the backward, the gradient of every step's gate
      pre-activations to [-c, c] before it reaches h_{t-1} and the weights (Graves 2013;
      the LSTM, the GRU and the layer-normalized cells run the row-wise ops for it, the RNN
      its own kernels).
    residual: each layer's input is added to its output (before the inter-layer dropout);
      every layer's input and output must be equally wide (ValueError naming the first
      that is not).
    return_states: also return every step's states, as a third result {"h": [L*D, T, N, P]
      (packed: [L*D, R, P]), and for the LSTMs "c": [L*D, T, N, H]} (L*D: layer-directions
      in the order of states): the ops' own outputs (h) and workspaces (c), not recomputed,
      and differentiable. h is each layer's state, before the residual sum and the dropout.
    reset: per-step resets, a bool flag per input row ([T, N] padded, [R] packed): a flagged
      sequence restarts from its initial state (states, or zeros) before that step, in every
      layer, forward and backward inside the kernels (reinforcement learning's episode
      boundaries). Unidirectional networks only.
    Returns (output, final states shaped like states[, states of every step]).
    """
    if reset is not None and bidirectional:
        raise ValueError("reset: per-step resets are for unidirectional networks (a reverse "
                         "direction has no previous step to restart from)")
    # float16 (and the ReLU RNN's bfloat16) on the CPU: widened once here rather than per
    # layer, so the layers pass float32 to each other and only the results are rounded.
    # (Rounded between layers, a ReLU pre-activation near 0 can change sign, and with it a
    # whole gradient entry: seen in tests/test_reduced_precision.py.)
    # The layer-normalized cells widen bfloat16 too (their ops take float32 and float64).
    widened = None
    # Named only where widened: the names' strings cost ~10 us of a one-step call's ~60.
    if not as_it_is(mode, input, nonlinearity):
        bf16 = (mode == "RNN" and nonlinearity == "relu") or mode in _NORM_NAMES
        named = {f"states[{k}]": s for k, s in enumerate(states)}
        for index, layer_weights in enumerate(weights):
            names = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr") + _NORM_NAMES.get(mode, ())
            flat = tuple(layer_weights[:5]) + tuple(layer_weights[5] if len(layer_weights) > 5
                                                    else ())
            named.update({f"{name} of layer-direction {index}": w
                          for name, w in zip(names, flat)})
        widened = _in_float32(mode, input, named, bf16=bf16)
    if widened is not None:
        x, a = widened
        wide = list(a.values())
        per = 5 + len(_NORM_NAMES.get(mode, ()))

        def layer(i):
            w = wide[len(states) + per * i:len(states) + per * (i + 1)]
            return tuple(w) if per == 5 else (*w[:5], tuple(w[5:]))

        output, finals, *every = stacked(
            mode, x, wide[:len(states)], [layer(i) for i in range(len(weights))],
            num_layers=num_layers, bidirectional=bidirectional, batch_sizes=batch_sizes,
            dropout=dropout, training=training, nonlinearity=nonlinearity,
            regularizers=regularizers, residual=residual, recurrent_grad_clip=recurrent_grad_clip,
            return_states=return_states, reset=reset)
        every = [{k: v.to(input.dtype) for k, v in e.items()} for e in every]
        return (output.to(input.dtype), tuple(f.to(input.dtype) for f in finals), *every)
    if (mode in _PLAIN_MODES and batch_sizes is None and reset is None and not residual
            and not return_states and _is_zero(recurrent_grad_clip)
            and (not regularizers or (not any(regularizers.values())
                                      and regularizers.keys() <= _REGULARIZER_NAMES))):
        return plain_stacked(mode, input, states, weights, num_layers, bidirectional,
                              dropout, training, nonlinearity)
    unknown = sorted(set(regularizers or {}) - set(REGULARIZERS)) if regularizers else ()
    if unknown:
        raise ValueError(f"unknown regularizer {unknown[0]!r}; they are {', '.join(REGULARIZERS)}")
    rates = {name: check_rate(name, p) for name, p in (regularizers or {}).items() if p}
    if rates.get("cell_zoneout") and mode not in ("LSTM", "LayerNormLSTM"):
        raise ValueError("cell_zoneout: only the LSTMs have a cell state")
    grad_clip = check_grad_clip(recurrent_grad_clip)
    if grad_clip and any(w[4] is not None for w in weights):
        raise ValueError("recurrent_grad_clip runs in the row-wise LSTM, which has no "
                         "projection (proj_size > 0)")
    if rates and mode == "RNN":
        raise ValueError(f"regularizers {sorted(rates)}: the LSTM, the GRU and the "
                         f"layer-normalized cells have them, the RNN does not")
    if any(rates.get(n) for n in ("zoneout", "cell_zoneout", "variational_state_dropout")) and \
            any(w[4] is not None for w in weights):
        raise ValueError("zoneout, cell_zoneout and variational_state_dropout run in the "
                         "row-wise LSTM, which has no projection (proj_size > 0)")
    directions = 2 if bidirectional else 1
    finals = [[] for _ in states]
    every = {"h": [], "c": []}
    cell_states = return_states and mode in ("LSTM", "LayerNormLSTM")
    layer_input = input
    for layer in range(num_layers):
        residual_input = layer_input
        rate = rates.get("variational_input_dropout", 0.0)
        if rate > 0 and training:
            # One mask per sequence and feature, shared by the steps and both directions.
            keep = _dropout_mask("variational_input_dropout",
                                 (_batch(layer_input, batch_sizes), layer_input.shape[-1]), rate,
                                 layer_input)
            layer_input = layer_input * _per_sequence(keep, batch_sizes)
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            layer_weights = weights[index]
            rate = rates.get("recurrent_dropconnect", 0.0)
            if rate > 0 and training:
                w_hh = layer_weights[1]
                keep = _dropout_mask("recurrent_dropconnect", w_hh.shape, rate, w_hh)
                layer_weights = (layer_weights[0], w_hh * keep, *layer_weights[2:])
            masks = _row_masks(layer_input, batch_sizes, layer_weights[1].shape[1], rates,
                               training)
            monitor.at_slot(index)
            out, final, *cells = _run_layer(mode, layer_input, batch_sizes,
                                            tuple(s[index] for s in states), layer_weights,
                                            direction == 1, nonlinearity, masks, grad_clip,
                                            cell_states, reset)
            outputs.append(out)
            every["h"].append(out)
            every["c"] += cells
            for kind, state in enumerate(final):
                finals[kind].append(state)
        layer_output = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
        if residual:
            if layer_output.shape[-1] != layer_input.shape[-1]:
                raise ValueError(f"residual: layer {layer} takes {layer_input.shape[-1]} "
                                 f"features and gives {layer_output.shape[-1]}, so its input "
                                 f"cannot be added to its output")
            # The layer's input as given (before the variational input dropout's mask).
            layer_output = layer_output + residual_input
        layer_input = layer_output
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = torch.nn.functional.dropout(layer_input, p=dropout, training=True)
    finals = tuple(torch.stack(f, 0) for f in finals)
    if return_states:
        return layer_input, finals, {k: torch.stack(v) for k, v in every.items() if v}
    return layer_input, finals
