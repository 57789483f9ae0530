"""torch.library registrations for gatedrnn::layer_norm_gru_forward / _backward."""
import torch

from .. import monitor, reference
from ._common import (check_devices, check_workspace_kept, fake_backward_grads, flat_rows,
                      grad_if, kept, not_made, output_like, output_mask, register_autocast,
                      register_autograd, register_first_order, row_wise_double_backward,
                      row_wise_setup_context, step_norms_like, zeros_if_none)

_NORMS = ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias")


@torch.library.register_fake("gatedrnn::layer_norm_gru_forward")
def _forward_fake(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, ln_ih_weight, ln_ih_bias,
                  ln_hh_weight, ln_hh_bias, state_mask, zoneout_h, reverse, need_workspace=True,
                  grad_clip=0.0, reset=None):
    norms = (ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias)
    check_devices("gatedrnn.layer_norm_gru_forward", input, batch_sizes, h0=h0, w_ih=w_ih,
                  w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, state_mask=state_mask, zoneout_h=zoneout_h,
                  **dict(zip(_NORMS, norms)))
    hidden = w_ih.shape[0] // 3
    workspace = input.new_empty((flat_rows(input) if need_workspace else 0, 10 * hidden + 2))
    return output_like(input, hidden), h0.new_empty(h0.shape), workspace


@torch.library.register_fake("gatedrnn::layer_norm_gru_backward")
def _backward_fake(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, ln_ih_weight,
                   ln_hh_weight, state_mask, zoneout_h, output, workspace, reverse,
                   grad_clip=0.0, reset=None, record_norms=False,
                   output_mask=(True, True, True)):
    check_devices("gatedrnn.layer_norm_gru_backward", input, batch_sizes,
                  grad_output=grad_output, grad_h_n=grad_h_n, h0=h0, w_ih=w_ih, w_hh=w_hh,
                  ln_ih_weight=ln_ih_weight, ln_hh_weight=ln_hh_weight, state_mask=state_mask,
                  zoneout_h=zoneout_h, output=output, workspace=workspace)
    norms = [w_ih.new_empty((w_ih.shape[0],)) if output_mask[2] else not_made(input)
             for _ in range(4)]
    return (*fake_backward_grads(input, (h0,), w_ih, w_hh, output_mask), *norms,
            step_norms_like(input, batch_sizes, record_norms, 1))


_TENSORS = 13  # the forward op's tensor arguments, before reverse
_setup_context = row_wise_setup_context(_TENSORS, 2)


def _backward(ctx, grad_output, grad_h_n, _grad_workspace):
    args = ctx.saved_tensors[:_TENSORS]
    out, workspace, reset = ctx.saved_tensors[_TENSORS:]
    if torch.is_grad_enabled():  # create_graph=True
        return row_wise_double_backward(ctx, reference.layer_norm_gru, args,
                                        (grad_output, grad_h_n), reset)
    input, batch_sizes, h0, w_ih, w_hh = args[:5]
    ln_ih_weight, ln_hh_weight = args[7], args[9]
    check_workspace_kept("gatedrnn.layer_norm_gru_forward", input, workspace)
    record = monitor.recording(ctx)
    mask = output_mask(ctx, states=(2,), weights=range(3, 11))
    grads = torch.ops.gatedrnn.layer_norm_gru_backward(
        zeros_if_none(grad_output, out), zeros_if_none(grad_h_n, h0), input, batch_sizes, h0,
        w_ih, w_hh, ln_ih_weight, ln_hh_weight, *args[11:13], out, workspace, ctx.reverse,
        ctx.grad_clip, reset, record, mask)
    d_input, d_h0, d_w_ih, d_w_hh = grads[:4]
    weights = mask[2]
    # Optional arguments (biases, LayerNorms) get a gradient only where given; the masks,
    # constants, none.
    optional = [kept(grad_if(a, g), weights) for a, g in zip(args[5:11], grads[4:10])]
    if record:
        monitor.deposit(ctx, grads[10])
    return (kept(d_input, mask[0]), None, kept(d_h0, mask[1]), kept(d_w_ih, weights),
            kept(d_w_hh, weights), *optional, *[None] * 6)


register_autograd("layer_norm_gru_forward", _backward, _setup_context)
register_first_order("layer_norm_gru_backward", "layer_norm_gru_forward")
# See layer_norm_lstm.py.
register_autocast("layer_norm_gru_forward", 2, lambda args, low: None)
