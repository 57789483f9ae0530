"""torch.library registrations for gatedrnn::lstm_forward / lstm_backward."""
import functools

import torch

from .. import monitor, reference
from ._common import (cell_state_grads, check_devices, check_workspace_kept,
                      differentiable_grads, fake_backward_grads, flat_rows, grad_if, kept,
                      output_for_backward, output_like, output_mask, output_to_save,
                      refuse_cell_state_double_backward,
                      refuse_reset_double_backward, register_autocast,
                      register_autograd, register_first_order, step_norms_like, workspace_like,
                      zeros_if_none)


PROJECTION_NOT_IN_ONNX = ("an LSTM with a projection (proj_size > 0) cannot be exported to "
                          "ONNX: ONNX's LSTM operator has no projection (torch.nn.LSTM's "
                          "export refuses it too)")


def workspace_columns(input, hidden: int) -> int:
    """lstm_forward's workspace width: the activated gates i, f, g, o, then the cell states
    c, in the workspace's dtype (5 * hidden), but for a bfloat16 op on the CPU, whose
    workspace is float32, the gates kept as float16 in its first 2 * hidden columns
    (3 * hidden; csrc/cpu/isa/lstm.h, lstm_gate_columns). The same on every CPU."""
    if input.dtype == torch.bfloat16 and input.device.type == "cpu":
        return 3 * hidden
    return 5 * hidden


def CELL_STATE_COLUMNS(w_hh, workspace):
    """(first column, count) of the cell states in lstm_forward's workspace: its last
    columns (workspace_columns)."""
    hidden = w_hh.shape[0] // 4
    return workspace.shape[1] - hidden, hidden


@torch.library.register_fake("gatedrnn::lstm_forward")
def _lstm_forward_fake(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                       need_workspace=True, reset=None):
    check_devices("gatedrnn.lstm_forward", input, batch_sizes, h0=h0, c0=c0, w_ih=w_ih,
                  w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr)
    if w_hr is not None and torch.onnx.is_in_onnx_export():
        # The module refuses this first (modules/_base.py); the exporters' graph captures
        # that reach the op (torch.export under Dynamo) are refused here.
        raise RuntimeError(PROJECTION_NOT_IN_ONNX)
    hidden = w_ih.shape[0] // 4
    state = w_hh.shape[1]
    workspace = workspace_like(input, flat_rows(input) if need_workspace else 0,
                               workspace_columns(input, hidden), rounded=False)
    return output_like(input, state), h0.new_empty(h0.shape), c0.new_empty(c0.shape), workspace


@torch.library.register_fake("gatedrnn::lstm_backward")
def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh,
                        w_hr, output, workspace, reverse, grad_cell_states=None, reset=None,
                        record_norms=False, output_mask=(True, True, True)):
    check_devices("gatedrnn.lstm_backward", input, batch_sizes, grad_output=grad_output,
                  grad_h_n=grad_h_n, grad_c_n=grad_c_n, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh,
                  w_hr=w_hr, output=output, workspace=workspace,
                  grad_cell_states=grad_cell_states)
    grad_w_hr = w_ih.new_empty(w_hr.shape if w_hr is not None and output_mask[2] else (0,))
    return (*fake_backward_grads(input, (h0, c0), w_ih, w_hh, output_mask), grad_w_hr,
            step_norms_like(input, batch_sizes, record_norms, 2))


def _setup_context(ctx, inputs, output):
    input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, _, reset = inputs
    out, _, _, workspace = output
    ctx.save_for_backward(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reset,
                          output_to_save(input, batch_sizes, out), workspace)
    # Outputs without a gradient arrive as None rather than as zeros: autograd would
    # otherwise allocate and clear a tensor the size of the workspace every backward.
    ctx.set_materialize_grads(False)
    ctx.reverse = reverse
    ctx.monitor = monitor.tag()


def _backward(ctx, grad_output, grad_h_n, grad_c_n, grad_workspace):
    input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reset, out, workspace = \
        ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True
        refuse_cell_state_double_backward(grad_workspace)
        refuse_reset_double_backward(reset)
        args = (input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ctx.reverse)
        grads = differentiable_grads(ctx, reference.lstm, args, (grad_output, grad_h_n, grad_c_n))
        return (*grads, None, None)
    check_workspace_kept("gatedrnn.lstm_forward", input, workspace)
    record = monitor.recording(ctx)
    out = output_for_backward(out, input, h0)
    mask = output_mask(ctx, states=(2, 3), weights=range(4, 9))
    grads = torch.ops.gatedrnn.lstm_backward(
        zeros_if_none(grad_output, out), zeros_if_none(grad_h_n, h0),
        zeros_if_none(grad_c_n, c0), input, batch_sizes, h0, c0, w_ih, w_hh, w_hr, out,
        workspace, ctx.reverse,
        cell_state_grads(grad_workspace, *CELL_STATE_COLUMNS(w_hh, workspace)), reset, record,
        mask)
    d_input, d_h0, d_c0, d_w_ih, d_w_hh, d_b_ih, d_b_hh, d_w_hr, step_norms = grads
    if record:
        monitor.deposit(ctx, step_norms)
    states, weights = mask[1:]
    return (kept(d_input, mask[0]), None, kept(d_h0, states), kept(d_c0, states),
            kept(d_w_ih, weights), kept(d_w_hh, weights), kept(grad_if(b_ih, d_b_ih), weights),
            kept(grad_if(b_hh, d_b_hh), weights), kept(grad_if(w_hr, d_w_hr), weights), None,
            None, None)


register_autograd("lstm_forward", _backward, _setup_context)
register_first_order("lstm_backward", "lstm_forward")


@functools.cache
def _onednn_reduced_dtypes() -> tuple:
    """The reduced dtypes torch's oneDNN LSTM takes on this CPU (float16 without gradients)."""
    return ((torch.bfloat16,) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else ()) + (
        (torch.float16,) if torch.ops.mkldnn._is_mkldnn_fp16_supported() else ())


def _takes_onednn_path(input, batch_sizes, w_hr, low) -> bool:
    """Whether torch.nn.LSTM runs this layer on oneDNN (use_mkldnn, aten/src/ATen/native/
    RNN.cpp, torch 2.4 to 2.14): padded, no projection, not empty, float32 input or, as a
    layer above the first gets it from the oneDNN path below, input in the autocast dtype.
    torch decides once for all layers, by the first layer's input, with a check of the CPU
    for a reduced dtype: where a model's own input is in that dtype and the CPU fails it (or
    float16 with gradients on) its layers run the other path, which gives float32 states
    from float32 ones; ours give them in the autocast dtype there."""
    dtype = input.dtype
    takes = dtype in (torch.float32, low) or (dtype in _onednn_reduced_dtypes() and (
        dtype == torch.bfloat16 or not torch.is_grad_enabled()))
    return (batch_sizes is None and w_hr is None and takes and input.numel() != 0
            and torch._C._get_mkldnn_enabled())


def _cpu_autocast_dtypes(args, low):
    """torch.nn.LSTM under CPU autocast (register_autocast). Its oneDNN operator casts
    everything to low. Elsewhere (packed, projected or empty input) its linear layers give
    the gates in low, and c = f * c0 + i * g, h = o * tanh(c) are promoted with c0's dtype
    (float32 c and h from float32 c0); a projection's linear layer gives h in low again.
    There ours compute in c's dtype, or in low with a projection and c_n widened (rounded
    to low once, where torch.nn's c keeps a rounding of its gates at every step)."""
    input, batch_sizes, c0, w_hr = args[0], args[1], args[3], args[8]
    if _takes_onednn_path(input, batch_sizes, w_hr, low):
        return low, (low, low, low)
    state = torch.promote_types(low, c0.dtype)
    return (low, (low, low, state)) if w_hr is not None else (state, (state, state, state))


register_autocast("lstm_forward", 3, _cpu_autocast_dtypes)
