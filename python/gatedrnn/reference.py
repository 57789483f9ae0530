"""The cells in plain PyTorch, one layer and one direction, step by step: the readable math,
an oracle for the tests, and the differentiable path that double backward runs through
(ops/_common.py: the fused backward ops compute first-order gradients only).

Each function takes the arguments of its forward op (torch.ops.gatedrnn.<cell>_forward) and
returns its outputs but the workspace. Shapes (T steps, N batch, I input, H hidden size,
P = proj_size or H):
  input     [T, N, I] padded, or packed data [R, I] with batch_sizes [T] (CPU int64)
  h0        [N, P]; c0 [N, H] (LSTM)
  w_ih      [G * H, I]; w_hh [G * H, P]; b_ih, b_hh [G * H] or None; w_hr [P, H] or None
  output    like input with P features; h_n [N, P]; c_n [N, H]

At step t only the first batch_sizes[t] rows are live (padded input: all N). The rows that
are not live keep their state: in the forward direction those sequences have ended (their
final state), in reverse they have not started yet (still h0), so one update rule,
state[:n] = step(state[:n]), serves both directions.

Math (as torch.nn):
  LSTM  i, f, g, o = chunks of x W_ih^T + b_ih + h W_hh^T + b_hh (in that order)
        c' = sigmoid(f) c + sigmoid(i) tanh(g),  h' = sigmoid(o) tanh(c')  [then h' W_hr^T]
  GRU   r, z, n: x W_ih^T + b_ih = (xr, xz, xn), h W_hh^T + b_hh = (hr, hz, hn)
        r = sigmoid(xr + hr), z = sigmoid(xz + hz), n = tanh(xn + r hn),  h' = (1 - z) n + z h
  RNN   h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh), act = tanh or relu

The row-wise cells (the layer-normalized LSTM and GRU, and the plain cells with the
regularizers that need the time loop), LN(v) = gain * (v - mean(v)) / sqrt(var(v) + 1e-5)
+ shift over the whole vector v, biased variance (torch.nn.LayerNorm's), LN(v) = v where
its gain is None:
  LayerNormLSTM  i, f, g, o = chunks of LN_x(x W_ih^T) + LN_h(h W_hh^T) + b_ih + b_hh
        (each LN over all 4H gates), c' = sigmoid(f) c + sigmoid(i) tanh(g),
        h' = sigmoid(o) tanh(LN_c(c'))
  LayerNormGRU   gx = LN_x(x W_ih^T) + b_ih, gh = LN_h(h W_hh^T) + b_hh (each LN over 3H),
        then the GRU's r, z, n and h' from gx and gh as above
  with the regularizers' masks (None where off): h enters h W_hh^T as state_mask * h
  (variational state dropout; state_mask [N, H], one row per sequence), and zoneout keeps
  each unit's previous value with weight d (zoneout_h, zoneout_c [R, H], a row per input
  row): h' = d h + (1 - d) h~, c' = d_c c + (1 - d_c) c~, where h~ is computed from c~
  (Krueger et al. 2016)
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


def _linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    y = x @ w.t()
    return y if b is None else y + b


def _schedule(input: Tensor, batch_sizes: Optional[Tensor]) -> Tuple[Tensor, List[int]]:
    """The input as rows [R, I] and the live rows of each step."""
    if batch_sizes is None:
        T, N = input.shape[0], input.shape[1]
        return input.reshape(T * N, input.shape[2]), [N] * T
    return input, [int(n) for n in batch_sizes.tolist()]


def _run(input: Tensor, batch_sizes: Optional[Tensor], states: Sequence[Tensor], reverse: bool,
         step: Callable[..., Tuple[Tensor, Tuple[Tensor, ...]]],
         per_row: Sequence[Optional[Tensor]] = ()):
    """Runs step(x_rows, live_states, *per_row_rows) -> (output_rows, new_live_states) over
    the sequence; per_row: tensors [R, *] (or None) with a row per input row, passed sliced
    as the input is. Returns (output laid out like input, final states)."""
    rows, sizes = _schedule(input, batch_sizes)
    per_row = [None if p is None else p.reshape(rows.shape[0], -1) for p in per_row]
    offsets = [0]
    for n in sizes[:-1]:
        offsets.append(offsets[-1] + n)
    outputs: List[Optional[Tensor]] = [None] * len(sizes)
    states = tuple(states)
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    for t in order:
        n, off = sizes[t], offsets[t]
        out, live = step(rows[off:off + n], tuple(s[:n] for s in states),
                         *(None if p is None else p[off:off + n] for p in per_row))
        outputs[t] = out
        states = tuple(torch.cat([new, s[n:]]) for new, s in zip(live, states))
    # No steps: an empty output as wide as the state (h, the first state).
    output = torch.cat(outputs) if outputs else rows.new_empty((0, states[0].shape[-1]))
    if batch_sizes is None:
        output = output.reshape(input.shape[0], input.shape[1], output.shape[-1])
    return output, states


def lstm(input: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, c0: Tensor, w_ih: Tensor,
         w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
         reverse: bool) -> Tuple[Tensor, Tensor, Tensor]:
    def step(x, state):
        h, c = state
        i, f, g, o = (_linear(x, w_ih, b_ih) + _linear(h, w_hh, b_hh)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if w_hr is not None:
            h = h @ w_hr.t()
        return h, (h, c)

    output, (h_n, c_n) = _run(input, batch_sizes, (h0, c0), reverse, step)
    return output, h_n, c_n


def _gru_update(gx: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """The GRU's new state from gx = (xr, xz, xn) and gh = (hr, hz, hn), biases included."""
    xr, xz, xn = gx.chunk(3, dim=1)
    hr, hz, hn = gh.chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def gru(input: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, w_ih: Tensor, w_hh: Tensor,
        b_ih: Optional[Tensor], b_hh: Optional[Tensor], reverse: bool) -> Tuple[Tensor, Tensor]:
    def step(x, state):
        h = _gru_update(_linear(x, w_ih, b_ih), _linear(state[0], w_hh, b_hh), state[0])
        return h, (h,)

    output, (h_n,) = _run(input, batch_sizes, (h0,), reverse, step)
    return output, h_n


def rnn(input: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, w_ih: Tensor, w_hh: Tensor,
        b_ih: Optional[Tensor], b_hh: Optional[Tensor], nonlinearity: str,
        reverse: bool) -> Tuple[Tensor, Tensor]:
    act = torch.relu if nonlinearity == "relu" else torch.tanh

    def step(x, state):
        (h,) = state
        h = act(_linear(x, w_ih, b_ih) + _linear(h, w_hh, b_hh))
        return h, (h,)

    output, (h_n,) = _run(input, batch_sizes, (h0,), reverse, step)
    return output, h_n


def _layer_norm(v: Tensor, gain: Optional[Tensor], shift: Optional[Tensor]) -> Tensor:
    """LayerNorm of each row of v over its last dimension, from the definition; v where
    gain is None (no LayerNorm)."""
    if gain is None:
        return v
    mean = v.mean(dim=-1, keepdim=True)
    var = ((v - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (v - mean) / torch.sqrt(var + 1e-5) * gain
    return y if shift is None else y + shift


def _add(v: Tensor, b: Optional[Tensor]) -> Tensor:
    return v if b is None else v + b


def _mul(v: Tensor, m: Optional[Tensor]) -> Tensor:
    return v if m is None else v * m


def _zoneout(d: Optional[Tensor], previous: Tensor, new: Tensor) -> Tensor:
    return new if d is None else d * previous + (1 - d) * new


def layer_norm_lstm_step(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
                         b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                         ln_ih_weight: Optional[Tensor], ln_ih_bias: Optional[Tensor],
                         ln_hh_weight: Optional[Tensor], ln_hh_bias: Optional[Tensor],
                         ln_cell_weight: Optional[Tensor], ln_cell_bias: Optional[Tensor],
                         state_mask: Optional[Tensor] = None, zoneout_h: Optional[Tensor] = None,
                         zoneout_c: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One step of the layer-normalized LSTM: (h', c') from x [N, I], h, c [N, H]."""
    gates = (_layer_norm(x @ w_ih.t(), ln_ih_weight, ln_ih_bias)
             + _layer_norm(_mul(h, state_mask) @ w_hh.t(), ln_hh_weight, ln_hh_bias))
    i, f, g, o = _add(_add(gates, b_ih), b_hh).chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(_layer_norm(c_new, ln_cell_weight, ln_cell_bias))
    return _zoneout(zoneout_h, h, h_new), _zoneout(zoneout_c, c, c_new)


def layer_norm_lstm(input: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, c0: Tensor,
                    w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                    ln_ih_weight: Optional[Tensor], ln_ih_bias: Optional[Tensor],
                    ln_hh_weight: Optional[Tensor], ln_hh_bias: Optional[Tensor],
                    ln_cell_weight: Optional[Tensor], ln_cell_bias: Optional[Tensor],
                    state_mask: Optional[Tensor], zoneout_h: Optional[Tensor],
                    zoneout_c: Optional[Tensor], reverse: bool) -> Tuple[Tensor, Tensor, Tensor]:
    params = (w_ih, w_hh, b_ih, b_hh, ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias,
              ln_cell_weight, ln_cell_bias)

    def step(x, state, zh, zc):
        n = x.shape[0]
        mask = None if state_mask is None else state_mask[:n]
        h, c = layer_norm_lstm_step(x, *state, *params, mask, zh, zc)
        return h, (h, c)

    output, (h_n, c_n) = _run(input, batch_sizes, (h0, c0), reverse, step,
                              (zoneout_h, zoneout_c))
    return output, h_n, c_n


def layer_norm_gru_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor,
                        b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                        ln_ih_weight: Optional[Tensor], ln_ih_bias: Optional[Tensor],
                        ln_hh_weight: Optional[Tensor], ln_hh_bias: Optional[Tensor],
                        state_mask: Optional[Tensor] = None,
                        zoneout_h: Optional[Tensor] = None) -> Tensor:
    """One step of the layer-normalized GRU: h' from x [N, I] and h [N, H]."""
    gx = _add(_layer_norm(x @ w_ih.t(), ln_ih_weight, ln_ih_bias), b_ih)
    gh = _add(_layer_norm(_mul(h, state_mask) @ w_hh.t(), ln_hh_weight, ln_hh_bias), b_hh)
    return _zoneout(zoneout_h, h, _gru_update(gx, gh, h))


def layer_norm_gru(input: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, w_ih: Tensor,
                   w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                   ln_ih_weight: Optional[Tensor], ln_ih_bias: Optional[Tensor],
                   ln_hh_weight: Optional[Tensor], ln_hh_bias: Optional[Tensor],
                   state_mask: Optional[Tensor], zoneout_h: Optional[Tensor],
                   reverse: bool) -> Tuple[Tensor, Tensor]:
    params = (w_ih, w_hh, b_ih, b_hh, ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias)

    def step(x, state, zh):
        mask = None if state_mask is None else state_mask[:x.shape[0]]
        h = layer_norm_gru_step(x, state[0], *params, mask, zh)
        return h, (h,)

    output, (h_n,) = _run(input, batch_sizes, (h0,), reverse, step, (zoneout_h,))
    return output, h_n
