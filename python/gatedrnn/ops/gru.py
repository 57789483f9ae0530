"""torch.library registrations for gatedrnn::gru_forward / gru_backward."""
import torch

from .. import monitor, reference
from ._common import (check_devices, check_workspace_kept, differentiable_grads,
                      fake_backward_grads, flat_rows, grad_if, kept, output_for_backward,
                      output_like, output_mask, output_to_save, refuse_reset_double_backward,
                      register_autocast, register_autograd, register_first_order,
                      step_norms_like, workspace_like, zeros_if_none)


@torch.library.register_fake("gatedrnn::gru_forward")
def _gru_forward_fake(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse,
                      need_workspace=True, reset=None):
    check_devices("gatedrnn.gru_forward", input, batch_sizes, h0=h0, w_ih=w_ih, w_hh=w_hh,
                  b_ih=b_ih, b_hh=b_hh)
    hidden = w_ih.shape[0] // 3
    workspace = workspace_like(input, flat_rows(input) if need_workspace else 0, 4 * hidden,
                               rounded=True)
    return output_like(input, hidden), h0.new_empty(h0.shape), workspace


@torch.library.register_fake("gatedrnn::gru_backward")
def _gru_backward_fake(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, output,
                       workspace, reverse, reset=None, record_norms=False,
                       output_mask=(True, True, True)):
    check_devices("gatedrnn.gru_backward", input, batch_sizes, grad_output=grad_output,
                  grad_h_n=grad_h_n, h0=h0, w_ih=w_ih, w_hh=w_hh, output=output,
                  workspace=workspace)
    return (*fake_backward_grads(input, (h0,), w_ih, w_hh, output_mask),
            step_norms_like(input, batch_sizes, record_norms, 1))


def _setup_context(ctx, inputs, output):
    input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse, _, reset = inputs
    out, _, workspace = output
    ctx.save_for_backward(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset,
                          output_to_save(input, batch_sizes, out), workspace)
    # Outputs without a gradient arrive as None rather than as zeros: autograd would
    # otherwise allocate and clear a tensor the size of the workspace every backward.
    ctx.set_materialize_grads(False)
    ctx.reverse = reverse
    ctx.monitor = monitor.tag()


def _backward(ctx, grad_output, grad_h_n, _grad_workspace):
    input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset, out, workspace = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True
        refuse_reset_double_backward(reset)
        args = (input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, ctx.reverse)
        return (*differentiable_grads(ctx, reference.gru, args, (grad_output, grad_h_n)), None,
                None)
    check_workspace_kept("gatedrnn.gru_forward", input, workspace)
    record = monitor.recording(ctx)
    out = output_for_backward(out, input, h0)
    mask = output_mask(ctx, states=(2,), weights=range(3, 7))
    d_input, d_h0, d_w_ih, d_w_hh, d_b_ih, d_b_hh, step_norms = torch.ops.gatedrnn.gru_backward(
        zeros_if_none(grad_output, out), zeros_if_none(grad_h_n, h0), input, batch_sizes, h0,
        w_ih, w_hh, out, workspace, ctx.reverse, reset, record, mask)
    if record:
        monitor.deposit(ctx, step_norms)
    weights = mask[2]
    return (kept(d_input, mask[0]), None, kept(d_h0, mask[1]), kept(d_w_ih, weights),
            kept(d_w_hh, weights), kept(grad_if(b_ih, d_b_ih), weights),
            kept(grad_if(b_hh, d_b_hh), weights), None, None, None)


register_autograd("gru_forward", _backward, _setup_context)
register_first_order("gru_backward", "gru_forward")


def _cpu_autocast_dtypes(args, low):
    """torch.nn.GRU under CPU autocast (register_autocast): its linear layers give the gates
    in low, and h = (1 - z) n + z h0 is promoted with h0's dtype (float32 from float32 h0).
    Ours compute in h's dtype."""
    state = torch.promote_types(low, args[2].dtype)
    return state, (state, state)


register_autocast("gru_forward", 2, _cpu_autocast_dtypes)
