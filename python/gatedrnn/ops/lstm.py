"""torch.library registrations for gatedrnn::lstm_forward / lstm_backward."""
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
# torch.nn.LSTM (2.4.1 to 2.14.1) casts on its oneDNN path (padded input, no projection) and
# wherever it has a projection (its default path's linear layers cast); packed input
# without one runs its fused cell in float32.
register_autocast("lstm_forward", 3, lambda args: args[1] is None or args[8] is not None)
