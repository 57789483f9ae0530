"""torch.library registrations for gatedrnn::rnn_forward / rnn_backward (tanh and relu)."""
import torch

from ._common import (check_devices, fake_backward_grads, output_like, register_autograd,
                      zeros_if_none)


@torch.library.register_fake("gatedrnn::rnn_forward")
def _rnn_forward_fake(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse):
    check_devices("gatedrnn.rnn_forward", input, batch_sizes, h0=h0, w_ih=w_ih, w_hh=w_hh,
                  b_ih=b_ih, b_hh=b_hh)
    return output_like(input, w_ih.shape[0]), h0.new_empty(h0.shape)


@torch.library.register_fake("gatedrnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, output,
                       nonlinearity, reverse):
    check_devices("gatedrnn.rnn_backward", input, batch_sizes, grad_output=grad_output,
                  grad_h_n=grad_h_n, h0=h0, w_ih=w_ih, w_hh=w_hh, output=output)
    return tuple(fake_backward_grads(input, (h0,), w_ih, w_hh))


def _setup_context(ctx, inputs, output):
    input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse = inputs
    out, _ = output
    ctx.save_for_backward(input, batch_sizes, h0, w_ih, w_hh, out)
    # Outputs without a gradient arrive as None rather than as zeros: autograd would
    # otherwise allocate and clear a tensor the size of the workspace every backward.
    ctx.set_materialize_grads(False)
    ctx.has_bias = (b_ih is not None, b_hh is not None)
    ctx.nonlinearity = nonlinearity
    ctx.reverse = reverse


def _backward(ctx, grad_output, grad_h_n):
    input, batch_sizes, h0, w_ih, w_hh, out = ctx.saved_tensors
    d_input, d_h0, d_w_ih, d_w_hh, d_b_ih, d_b_hh = torch.ops.gatedrnn.rnn_backward(
        zeros_if_none(grad_output, out), zeros_if_none(grad_h_n, h0), input, batch_sizes, h0,
        w_ih, w_hh, out, ctx.nonlinearity, ctx.reverse)
    has_b_ih, has_b_hh = ctx.has_bias
    return (d_input, None, d_h0, d_w_ih, d_w_hh, d_b_ih if has_b_ih else None,
            d_b_hh if has_b_hh else None, None, None)


register_autograd("rnn_forward", _backward, _setup_context)
