"""torch.library registrations for gatedrnn::layer_norm_lstm_forward / _backward."""
import torch

from .. import monitor, reference
from ._common import (cell_state_grads, check_devices, check_workspace_kept,
                      fake_backward_grads, flat_rows, grad_if, kept, not_made, output_like,
                      output_mask, refuse_cell_state_double_backward, register_autocast,
                      register_autograd, register_first_order, row_wise_double_backward,
                      row_wise_setup_context, step_norms_like, zeros_if_none)

_NORMS = ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias", "ln_cell_weight",
          "ln_cell_bias")


@torch.library.register_fake("gatedrnn::layer_norm_lstm_forward")
def _forward_fake(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, ln_ih_weight, ln_ih_bias,
                  ln_hh_weight, ln_hh_bias, ln_cell_weight, ln_cell_bias, state_mask, zoneout_h,
                  zoneout_c, reverse, need_workspace=True, grad_clip=0.0, reset=None):
    norms = (ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias, ln_cell_weight, ln_cell_bias)
    check_devices("gatedrnn.layer_norm_lstm_forward", input, batch_sizes, h0=h0, c0=c0,
                  w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, state_mask=state_mask,
                  zoneout_h=zoneout_h, zoneout_c=zoneout_c, **dict(zip(_NORMS, norms)))
    hidden = w_ih.shape[0] // 4
    workspace = input.new_empty((flat_rows(input) if need_workspace else 0, 15 * hidden + 4))
    return output_like(input, hidden), h0.new_empty(h0.shape), c0.new_empty(c0.shape), workspace


@torch.library.register_fake("gatedrnn::layer_norm_lstm_backward")
def _backward_fake(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh,
                   ln_ih_weight, ln_hh_weight, ln_cell_weight, state_mask, zoneout_h, zoneout_c,
                   output, workspace, reverse, grad_clip=0.0, grad_cell_states=None, reset=None,
                   record_norms=False, output_mask=(True, True, True)):
    check_devices("gatedrnn.layer_norm_lstm_backward", input, batch_sizes,
                  grad_output=grad_output, grad_h_n=grad_h_n, grad_c_n=grad_c_n, h0=h0, c0=c0,
                  w_ih=w_ih, w_hh=w_hh, ln_ih_weight=ln_ih_weight, ln_hh_weight=ln_hh_weight,
                  ln_cell_weight=ln_cell_weight, state_mask=state_mask, zoneout_h=zoneout_h,
                  zoneout_c=zoneout_c, output=output, workspace=workspace,
                  grad_cell_states=grad_cell_states)
    hidden = w_ih.shape[0] // 4
    norms = [w_ih.new_empty((n,)) if output_mask[2] else not_made(input)
             for n in (4 * hidden,) * 4 + (hidden,) * 2]
    return (*fake_backward_grads(input, (h0, c0), w_ih, w_hh, output_mask), *norms,
            step_norms_like(input, batch_sizes, record_norms, 2))


def CELL_STATE_COLUMNS(w_hh):
    """(first column, count) of the cell states c' in layer_norm_lstm_forward's workspace
    (csrc/cpu/layer_norm_lstm.cpp, Layout::c_out)."""
    hidden = w_hh.shape[1]
    return 14 * hidden, hidden


_TENSORS = 17  # the forward op's tensor arguments, before reverse
_setup_context = row_wise_setup_context(_TENSORS, 3)


def _backward(ctx, grad_output, grad_h_n, grad_c_n, grad_workspace):
    args = ctx.saved_tensors[:_TENSORS]
    out, workspace, reset = ctx.saved_tensors[_TENSORS:]
    if torch.is_grad_enabled():  # create_graph=True
        refuse_cell_state_double_backward(grad_workspace)
        return row_wise_double_backward(ctx, reference.layer_norm_lstm, args,
                                        (grad_output, grad_h_n, grad_c_n), reset)
    input, batch_sizes, h0, c0, w_ih, w_hh = args[:6]
    ln_ih_weight, ln_hh_weight, ln_cell_weight = args[8], args[10], args[12]
    check_workspace_kept("gatedrnn.layer_norm_lstm_forward", input, workspace)
    record = monitor.recording(ctx)
    mask = output_mask(ctx, states=(2, 3), weights=range(4, 14))
    grads = torch.ops.gatedrnn.layer_norm_lstm_backward(
        zeros_if_none(grad_output, out), zeros_if_none(grad_h_n, h0),
        zeros_if_none(grad_c_n, c0), input, batch_sizes, h0, c0, w_ih, w_hh, ln_ih_weight,
        ln_hh_weight, ln_cell_weight, *args[14:17], out, workspace, ctx.reverse,
        ctx.grad_clip, cell_state_grads(grad_workspace, *CELL_STATE_COLUMNS(w_hh)), reset,
        record, mask)
    d_input, d_h0, d_c0, d_w_ih, d_w_hh = grads[:5]
    states, weights = mask[1:]
    # Optional arguments (biases, LayerNorms) get a gradient only where given; the masks,
    # constants, none.
    optional = [kept(grad_if(a, g), weights) for a, g in zip(args[6:14], grads[5:13])]
    if record:
        monitor.deposit(ctx, grads[13])
    return (kept(d_input, mask[0]), None, kept(d_h0, states), kept(d_c0, states),
            kept(d_w_ih, weights), kept(d_w_hh, weights), *optional, *[None] * 7)


register_autograd("layer_norm_lstm_forward", _backward, _setup_context)
register_first_order("layer_norm_lstm_backward", "layer_norm_lstm_forward")
# No torch.nn counterpart to follow: under autocast the op runs in its arguments' dtype,
# as torch.nn.LayerNorm runs in float32 (functional.py casts the input to the weights').
register_autocast("layer_norm_lstm_forward", 3, lambda args, low: None)
