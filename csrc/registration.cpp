// Every op schema of the gatedrnn library; implementations register per device
// in cpu/ and cuda/. One op per (cell, layer, direction) over a whole sequence:
// input is padded [T, N, I] (batch_sizes None) or packed [R, I] with batch_sizes.
// need_workspace = false (inference: no backward will run) returns an empty [0, *]
// workspace, so the forward need not keep per-step activations.
// grad_clip (the RNN's; the row-wise ops' below): > 0 clamps the gradient of every step's
// pre-activations to [-grad_clip, grad_clip] in the backward (recurrent_grad_clip); the
// forward op only carries it for autograd.
// reset [rows] bool, on the CPU (optional; per-step resets, the modules' forward(...,
// reset=mask)): a flag per input row; a flagged row's sequence restarts from its initial
// state (h0, c0) at that step instead of carrying the state of its previous step; the
// backward op takes the forward's.
// record_norms = true (the gradient-norm monitor, gatedrnn.grad_norms) makes a backward op
// return in step_norms, [T, kinds] float64, for each step t in time order the sum of squares
// of the total gradient reaching the step's state h_t (from the output at t and from step
// t + 1; packed input: the step's live rows), and for the LSTMs of c_t's in column 1;
// otherwise step_norms is [0, kinds].
// output_mask (every backward op), as ATen's backward ops take it: which of grad_input,
// the initial states' gradients (grad_h0, and the LSTMs' grad_c0) and the parameters'
// (grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, the LSTM's grad_w_hr, the LayerNorms'
// gains and shifts) to compute; the others are returned as empty [0] tensors. The Autograd
// kernels set it from what needs a gradient.
// grad_cell_states [rows, hidden] (the LSTMs' backward, optional): the gradient w.r.t. the
// cell state of every step as the workspace holds it (the modules' return_states), added
// to what reaches c_t from step t + 1. A workspace is differentiable in those columns only:
// the Autograd kernels pass them on as grad_cell_states and ignore the rest.
#include <torch/library.h>

TORCH_LIBRARY(gatedrnn, m) {
  m.def(
      "lstm_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, "
      "bool need_workspace=True, Tensor? reset=None) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
      "Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? w_hr, "
      "Tensor output, Tensor workspace, bool reverse, Tensor? grad_cell_states=None, "
      "Tensor? reset=None, bool record_norms=False, "
      "bool[3] output_mask=[True, True, True]) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_w_hr, "
      "Tensor step_norms)");
  m.def(
      "gru_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, bool reverse, bool need_workspace=True, "
      "Tensor? reset=None) -> (Tensor output, Tensor h_n, Tensor workspace)");
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? batch_sizes, "
      "Tensor h0, Tensor w_ih, Tensor w_hh, Tensor output, Tensor workspace, bool reverse, "
      "Tensor? reset=None, bool record_norms=False, "
      "bool[3] output_mask=[True, True, True]) -> (Tensor grad_input, Tensor grad_h0, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, "
      "Tensor step_norms)");
  m.def(
      "rnn_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, str nonlinearity, bool reverse, float grad_clip=0.0, "
      "Tensor? reset=None) -> (Tensor output, Tensor h_n)");
  m.def(
      "rnn_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? batch_sizes, "
      "Tensor h0, Tensor w_ih, Tensor w_hh, Tensor output, str nonlinearity, bool reverse, "
      "float grad_clip=0.0, Tensor? reset=None, bool record_norms=False, "
      "bool[3] output_mask=[True, True, True]) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor step_norms)");
  // The row-wise cells: the layer-normalized LSTM and GRU (modules LayerNormLSTM,
  // LayerNormGRU): LN_x(W_ih x) and LN_h(W_hh h) each over the whole gate row, the LSTM's
  // LN_c over its cell state, each with a gain (ln_*_weight) and an optional shift
  // (ln_*_bias); a LayerNorm whose gain is None is left out (all of them: the plain cell,
  // which the plain modules run here when a regularizer needs the time loop). Masks,
  // constants to autograd: state_mask [N, hidden] multiplies h where it enters the
  // recurrent GEMM (variational state dropout); zoneout_h, zoneout_c [rows, hidden] are
  // each row's zoneout weight d of the previous state: h' = d h + (1 - d) h~. grad_clip
  // (> 0; 0 = off) clamps the gradient of every step's gate pre-activations to
  // [-grad_clip, grad_clip] in the backward (Graves 2013); the forward op only carries it
  // for autograd.
  m.def(
      "layer_norm_lstm_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? ln_ih_weight, "
      "Tensor? ln_ih_bias, Tensor? ln_hh_weight, Tensor? ln_hh_bias, Tensor? ln_cell_weight, "
      "Tensor? ln_cell_bias, Tensor? state_mask, Tensor? zoneout_h, Tensor? zoneout_c, "
      "bool reverse, bool need_workspace=True, float grad_clip=0.0, Tensor? reset=None) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def(
      "layer_norm_lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, "
      "Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, "
      "Tensor? ln_ih_weight, Tensor? ln_hh_weight, Tensor? ln_cell_weight, "
      "Tensor? state_mask, Tensor? zoneout_h, Tensor? zoneout_c, Tensor output, "
      "Tensor workspace, bool reverse, float grad_clip=0.0, Tensor? grad_cell_states=None, "
      "Tensor? reset=None, bool record_norms=False, bool[3] output_mask=[True, True, True]) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_ln_ih_weight, "
      "Tensor grad_ln_ih_bias, Tensor grad_ln_hh_weight, Tensor grad_ln_hh_bias, "
      "Tensor grad_ln_cell_weight, Tensor grad_ln_cell_bias, Tensor step_norms)");
  m.def(
      "layer_norm_gru_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? ln_ih_weight, Tensor? ln_ih_bias, "
      "Tensor? ln_hh_weight, Tensor? ln_hh_bias, Tensor? state_mask, Tensor? zoneout_h, "
      "bool reverse, bool need_workspace=True, float grad_clip=0.0, Tensor? reset=None) "
      "-> (Tensor output, Tensor h_n, Tensor workspace)");
  m.def(
      "layer_norm_gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, "
      "Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? ln_ih_weight, "
      "Tensor? ln_hh_weight, Tensor? state_mask, Tensor? zoneout_h, Tensor output, "
      "Tensor workspace, bool reverse, float grad_clip=0.0, Tensor? reset=None, "
      "bool record_norms=False, bool[3] output_mask=[True, True, True]) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_ln_ih_weight, Tensor grad_ln_ih_bias, "
      "Tensor grad_ln_hh_weight, Tensor grad_ln_hh_bias, Tensor step_norms)");
}
