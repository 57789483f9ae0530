"""torch.library registrations for gatedrnn::rnn_forward / rnn_backward (tanh and relu)."""
import torch

from .. import monitor, reference
from ._common import (check_devices, differentiable_grads, fake_backward_grads, grad_if,
                      kept, output_like, output_mask, register_autocast, register_autograd,
                      register_first_order, refuse_clipped_double_backward,
                      refuse_reset_double_backward, step_norms_like, zeros_if_none)


@torch.library.register_fake("gatedrnn::rnn_forward")
def _rnn_forward_fake(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse,
                      grad_clip=0.0, reset=None):
    check_devices("gatedrnn.rnn_forward", input, batch_sizes, h0=h0, w_ih=w_ih, w_hh=w_hh,
                  b_ih=b_ih, b_hh=b_hh)
    return output_like(input, w_ih.shape[0]), h0.new_empty(h0.shape)


@torch.library.register_fake("gatedrnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, output,
                       nonlinearity, reverse, grad_clip=0.0, reset=None, record_norms=False,
                       output_mask=(True, True, True)):
    check_devices("gatedrnn.rnn_backward", input, batch_sizes, grad_output=grad_output,
                  grad_h_n=grad_h_n, h0=h0, w_ih=w_ih, w_hh=w_hh, output=output)
    return (*fake_backward_grads(input, (h0,), w_ih, w_hh, output_mask),
            step_norms_like(input, batch_sizes, record_norms, 1))


def _setup_context(ctx, inputs, output):
    input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse, grad_clip, reset = \
        inputs
    out, _ = output
    ctx.save_for_backward(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset, out)
    # Outputs without a gradient arrive as None rather than as zeros: autograd would
    # otherwise allocate and clear a tensor the size of the output every backward.
    ctx.set_materialize_grads(False)
    ctx.nonlinearity = nonlinearity
    ctx.reverse = reverse
    ctx.grad_clip = grad_clip
    ctx.monitor = monitor.tag()


def _backward(ctx, grad_output, grad_h_n):
    input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset, out = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True
        refuse_clipped_double_backward(ctx.grad_clip)
        refuse_reset_double_backward(reset)
        args = (input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, ctx.nonlinearity, ctx.reverse)
        return (*differentiable_grads(ctx, reference.rnn, args, (grad_output, grad_h_n)), None,
                None)
    record = monitor.recording(ctx)
    mask = output_mask(ctx, states=(2,), weights=range(3, 7))
    d_input, d_h0, d_w_ih, d_w_hh, d_b_ih, d_b_hh, step_norms = torch.ops.gatedrnn.rnn_backward(
        zeros_if_none(grad_output, out), zeros_if_none(grad_h_n, h0), input, batch_sizes, h0,
        w_ih, w_hh, out, ctx.nonlinearity, ctx.reverse, ctx.grad_clip, reset, record, mask)
    if record:
        monitor.deposit(ctx, step_norms)
    weights = mask[2]
    return (kept(d_input, mask[0]), None, kept(d_h0, mask[1]), kept(d_w_ih, weights),
            kept(d_w_hh, weights), kept(grad_if(b_ih, d_b_ih), weights),
            kept(grad_if(b_hh, d_b_hh), weights), None, None, None, None)


register_autograd("rnn_forward", _backward, _setup_context)
register_first_order("rnn_backward", "rnn_forward")
# torch.nn.RNN's linear layers cast under CPU autocast, so its output is in that dtype.
register_autocast("rnn_forward", 2, lambda args, low: (low, (low, low)))
