// The row-wise LSTM over one direction of a (possibly packed) sequence, on the CPU: the
// layer-normalized LSTM (Ba et al. 2016), and with its LayerNorms left out the plain LSTM
// where a regularizer needs the time loop. Gate order i, f, g, o as torch.nn.LSTM's; each
// LayerNorm is over a whole row (the 4H gates together, or the H cells), with its own gain
// and shift:
//   gates = LN_x(W_ih x) + LN_h(W_hh (m h)) + b_ih + b_hh      (m: the state mask, or 1)
//   c~ = s(f) c + s(i) tanh(g),  h~ = s(o) tanh(LN_c(c~))
//   c' = d_c c + (1 - d_c) c~,  h' = d_h h + (1 - d_h) h~     (zoneout, d = 0 where off)
// The loops are layer_norm_rnn.h's; this file has the cell's pointwise passes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../common/row_wise_portable.h"
#include "layer_norm_rnn.h"

namespace gatedrnn {
namespace {

constexpr int64_t kGates = 4;
constexpr const char* kForward = "gatedrnn.layer_norm_lstm_forward";
constexpr const char* kBackward = "gatedrnn.layer_norm_lstm_backward";

using Layout = LayerNormLstmLayout;

// The LayerNorms: gains (ones where a LayerNorm is left out), the LN_c shift (may be null),
// and which are there.
template <typename scalar_t>
struct Norms {
  const scalar_t *gain_x, *gain_h, *gain_c, *shift_c;
  bool x, h, c;
};

//   x: [R, I], w_ih: [4H, I], w_hh: [4H, H]; shift: [4H] b_ih + b_hh + the LN_x and LN_h
//   shifts; out: [R, H], h_state, c_state: [N, H] (initial in, final out); ws: [R, width]
//   or undefined (inference)
template <typename scalar_t>
void forward_impl(const Schedule& s, int64_t H, const at::Tensor& x, const at::Tensor& w_ih,
                  const at::Tensor& w_hh, const at::Tensor& shift, const Norms<scalar_t>& ln,
                  const Regularizers<scalar_t>& reg, at::Tensor& out, at::Tensor& h_state,
                  at::Tensor& c_state, at::Tensor& ws) {
  const Layout L{H};
  const int64_t G = kGates * H, N = s.batch;
  // With no workspace, the normalized input projection gets a buffer of its own, and the
  // rest of a row is scratch.
  at::Tensor xhat = ws.defined() ? ws : cached_empty({s.rows, G}, x.options());
  const int64_t xhat_ld = xhat.size(1);
  scalar_t* xh = xhat.mutable_data_ptr<scalar_t>();
  scalar_t* wsp = ws.defined() ? ws.mutable_data_ptr<scalar_t>() : nullptr;
  normalized_input_projection<scalar_t>(x, w_ih, ln.x, xh, xhat_ld,
                                        wsp ? wsp + L.rstd_x() : nullptr, L.width());
  at::Tensor gh = at::empty({N, G}, x.options());
  scalar_t* hs = h_state.mutable_data_ptr<scalar_t>();
  scalar_t* cs = c_state.mutable_data_ptr<scalar_t>();
  // The GEMM reads m h: a masked copy of the state where there is a state mask.
  at::Tensor masked = reg.state ? h_state * at::from_blob(const_cast<scalar_t*>(reg.state),
                                                          {N, H}, h_state.options())
                                : h_state;
  scalar_t* hm = masked.mutable_data_ptr<scalar_t>();
  scalar_t* outp = out.mutable_data_ptr<scalar_t>();
  const scalar_t* sh = shift.const_data_ptr<scalar_t>();
  const ActivationKernels<scalar_t>& act = activation_kernels<scalar_t>();
  const LayerNormKernels<scalar_t>& ln_kernels = layer_norm_kernels<scalar_t>();
  const auto row = [&](int64_t k, int64_t b, int64_t r, const scalar_t* a, scalar_t* scratch) {
    scalar_t* w = wsp ? wsp + r * L.width() : scratch;
    const scalar_t* xx = xh + r * xhat_ld;
    scalar_t* xhh = w + L.xhat_h();
    scalar_t* gate = w + L.gates();
    const auto [mean_h, rstd_h] = ln.h ? row_stats(a, G) : std::pair<scalar_t, scalar_t>{0, 1};
    // xhh = (a - mean_h) rstd_h, gate = gain_x xx + gain_h xhh + sh (per ISA: compiled
    // here, for the baseline ISA, it stayed scalar, ~5% of a training step)
    ln_kernels.lstm_gates(G, a, mean_h, rstd_h, ln.gain_x, xx, ln.gain_h, sh, xhh, gate);
    act.sigmoid(2 * H, gate, gate);
    act.tanh(H, gate + 2 * H, gate + 2 * H);
    act.sigmoid(H, gate + 3 * H, gate + 3 * H);
    scalar_t* c = cs + b * H;
    scalar_t* cell = w + L.cell();
    scalar_t* c_out = w + L.c_out();
    const scalar_t* dc = reg.zoneout_c ? reg.zoneout_c + r * H : nullptr;
    ln_kernels.lstm_cell_forward(H, gate, dc, c, cell, c_out);
    const auto [mean_c, rstd_c] =
        ln.c ? row_stats(cell, H) : std::pair<scalar_t, scalar_t>{0, 1};
    scalar_t* tl = w + L.tanh_lc();
    const scalar_t* dh = reg.zoneout_h ? reg.zoneout_h + r * H : nullptr;
    scalar_t* h = hs + b * H;
    ln_kernels.lstm_hidden_forward(H, cell, mean_c, rstd_c, ln.gain_c, ln.shift_c, gate, dh, tl,
                                   h, outp + r * H);
    // a row that restarts at the next step carries h0 and c0 into it instead (resets)
    if (reg.resets.at(s, k + 1, b)) {
      std::copy(reg.h0 + b * H, reg.h0 + (b + 1) * H, h);
      std::copy(reg.c0 + b * H, reg.c0 + (b + 1) * H, c);
    }
    if (reg.state) {
      for (int64_t j = 0; j < H; ++j) hm[b * H + j] = h[j] * reg.state[b * H + j];
    }
    w[L.rstd_h()] = rstd_h;
    w[L.rstd_c()] = rstd_c;
    w[L.mean_c()] = mean_c;
  };
  layer_norm_forward_loop<scalar_t>(s, w_hh, hm, gh.mutable_data_ptr<scalar_t>(), L.width(),
                                    row);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_lstm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& ln_ih_weight, const std::optional<at::Tensor>& ln_ih_bias,
    const std::optional<at::Tensor>& ln_hh_weight, const std::optional<at::Tensor>& ln_hh_bias,
    const std::optional<at::Tensor>& ln_cell_weight,
    const std::optional<at::Tensor>& ln_cell_bias, const std::optional<at::Tensor>& state_mask,
    const std::optional<at::Tensor>& zoneout_h, const std::optional<at::Tensor>& zoneout_c,
    bool reverse, bool need_workspace, double /*grad_clip: for autograd*/,
    const std::optional<at::Tensor>& reset) {
  // GATEDRNN_ROW_WISE_PORTABLE=1: the ATen ops the CUDA build runs
  // (common/row_wise_portable.h)
  if (portable::enabled_on_cpu()) {
    return portable::layer_norm_lstm_forward(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                             ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias,
                                             ln_cell_weight, ln_cell_bias, state_mask, zoneout_h,
                                             zoneout_c, reverse, need_workspace,
                                             /*grad_clip: unused*/ 0.0, reset);
  }
  const RnnShapes sh = check_layer_norm_args(kForward, kGates, input, batch_sizes, h0, &c0,
                                             w_ih, w_hh, b_ih, b_hh, reverse);
  const Resets resets = resets_of(kForward, reset, sh.schedule);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, G = kGates * H;
  check_shift_has_gain(kForward, ln_ih_weight, ln_ih_bias, "ln_ih_bias");
  check_shift_has_gain(kForward, ln_hh_weight, ln_hh_bias, "ln_hh_bias");
  check_shift_has_gain(kForward, ln_cell_weight, ln_cell_bias, "ln_cell_bias");
  const at::Tensor gx = layer_norm_param(kForward, input, ln_ih_weight, "ln_ih_weight", G, true);
  const at::Tensor bx = layer_norm_param(kForward, input, ln_ih_bias, "ln_ih_bias", G, false);
  const at::Tensor gh = layer_norm_param(kForward, input, ln_hh_weight, "ln_hh_weight", G, true);
  const at::Tensor bh = layer_norm_param(kForward, input, ln_hh_bias, "ln_hh_bias", G, false);
  const at::Tensor gc =
      layer_norm_param(kForward, input, ln_cell_weight, "ln_cell_weight", H, true);
  const at::Tensor bc =
      layer_norm_param(kForward, input, ln_cell_bias, "ln_cell_bias", H, false);
  const at::Tensor x = input.contiguous().view({s.rows, sh.input_size});
  const auto opts = x.options();
  at::Tensor shift = combined_bias(b_ih, b_hh, G, opts);
  if (bx.defined()) shift.add_(bx);
  if (bh.defined()) shift.add_(bh);
  at::Tensor out = cached_empty({s.rows, H}, opts);
  const at::Tensor h0c = h0.contiguous(), c0c = c0.contiguous();
  at::Tensor h_state = h0c.clone(), c_state = c0c.clone();
  at::Tensor ws = cached_empty({need_workspace ? s.rows : 0, Layout{H}.width()}, opts);
  at::Tensor ws_arg = need_workspace ? ws : at::Tensor();
  const at::Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
  std::vector<at::Tensor> keep;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), kForward, [&] {
    const Norms<scalar_t> ln{gx.const_data_ptr<scalar_t>(), gh.const_data_ptr<scalar_t>(),
                             gc.const_data_ptr<scalar_t>(),
                             bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr,
                             is_given(ln_ih_weight), is_given(ln_hh_weight),
                             is_given(ln_cell_weight)};
    const Regularizers<scalar_t> reg{
        mask_data<scalar_t>(kForward, input, state_mask, "state_mask", s.batch, H, keep),
        mask_data<scalar_t>(kForward, input, zoneout_h, "zoneout_h", s.rows, H, keep),
        mask_data<scalar_t>(kForward, input, zoneout_c, "zoneout_c", s.rows, H, keep), resets,
        h0c.const_data_ptr<scalar_t>(), c0c.const_data_ptr<scalar_t>()};
    forward_impl<scalar_t>(s, H, x, wih, whh, shift, ln, reg, out, h_state, c_state, ws_arg);
  });
  return {shaped_like_input(out, input), h_state, c_state, ws};
}

// The gradients the backward loop leaves per row, kept for the sums and GEMMs after it:
//   dpre [R, 4H] of the gate pre-activations; dgh [R, 4H] of W_hh m h (before LN_h);
//   dlc [R, H] of LN_c's output
template <typename scalar_t>
void backward_impl(const Schedule& s, int64_t H, const scalar_t* go, const at::Tensor& c0,
                   const at::Tensor& w_hh, const Norms<scalar_t>& ln,
                   const Regularizers<scalar_t>& reg, scalar_t clip, const at::Tensor& ws,
                   at::Tensor& dh_state, at::Tensor& dc_state, at::Tensor& dpre, at::Tensor& dgh,
                   at::Tensor& dlc, const scalar_t* grad_cs, StepNorms& norms,
                   bool grad_h0) {
  const Layout L{H};
  const int64_t G = kGates * H;
  const scalar_t* wsp = ws.const_data_ptr<scalar_t>();
  const scalar_t* c0p = c0.const_data_ptr<scalar_t>();
  scalar_t* dhs = dh_state.mutable_data_ptr<scalar_t>();
  scalar_t* dcs = dc_state.mutable_data_ptr<scalar_t>();
  scalar_t* dp = dpre.mutable_data_ptr<scalar_t>();
  scalar_t* dg = dgh.mutable_data_ptr<scalar_t>();
  scalar_t* dl = dlc.mutable_data_ptr<scalar_t>();
  // what reaches h0 and c0 through the rows that restarted from them (resets)
  at::Tensor dh0_reset = reg.resets.flags ? at::zeros_like(dh_state) : at::Tensor();
  at::Tensor dc0_reset = reg.resets.flags ? at::zeros_like(dc_state) : at::Tensor();
  scalar_t* dh0 = reg.resets.flags ? dh0_reset.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* dc0 = reg.resets.flags ? dc0_reset.mutable_data_ptr<scalar_t>() : nullptr;
  const LayerNormKernels<scalar_t>& ln_kernels = layer_norm_kernels<scalar_t>();
  const auto row = [&](int64_t k, int64_t b, int64_t r, const scalar_t* dh_g) {
    const scalar_t* w = wsp + r * L.width();
    const scalar_t* gate = w + L.gates();
    const scalar_t* cell = w + L.cell();
    const scalar_t* tl = w + L.tanh_lc();
    const scalar_t rstd_c = w[L.rstd_c()], mean_c = w[L.mean_c()];
    const scalar_t* c_prev =
        previous_rows(s, k, wsp + L.c_out(), L.width(), c0p, H, reg.resets).row(b);
    const scalar_t* zh = reg.zoneout_h ? reg.zoneout_h + r * H : nullptr;
    const scalar_t* zc = reg.zoneout_c ? reg.zoneout_c + r * H : nullptr;
    const scalar_t* m = reg.state ? reg.state + b * H : nullptr;
    scalar_t* dl_r = dl + r * H;
    scalar_t* dp_r = dp + r * G;
    scalar_t* dc = dcs + b * H;
    scalar_t* dh = dhs + b * H;
    double* sq = norms.at(s.time_at(k), b);
    // a row that restarted at step k + 1 fed h0 and c0 into it, not h_t and c_t: what came
    // back is theirs
    const bool restarted = reg.resets.at(s, k + 1, b);
    if (restarted) {
      for (int64_t j = 0; j < H; ++j) {
        dh0[b * H + j] += dh[j] + (m ? m[j] : scalar_t(1)) * dh_g[j];
        dc0[b * H + j] += dc[j];
        dc[j] = scalar_t(0);
      }
    }
    // the gradient reaching the state c'_t directly (return_states), then from step t + 1
    if (grad_cs) {
      for (int64_t j = 0; j < H; ++j) dc[j] += grad_cs[r * H + j];
    }
    // d = the gradient reaching h'_t; dl that of LN_c's output; dp_r's o columns
    ln_kernels.lstm_output_grads(H, go + r * H, dh, m, dh_g, restarted, zh, gate, tl, sq, dl_r,
                                 dp_r);
    // dc~ = LN_c's input gradient + what c' passes to c~ (in dp_r's i columns, free until
    // the gates' gradients replace it)
    scalar_t* dcell = dp_r;
    for (int64_t j = 0; j < H; ++j) dcell[j] = (cell[j] - mean_c) * rstd_c;  // LN_c's xhat
    norm_input_grad(ln.c, H, dl_r, ln.gain_c, dcell, rstd_c, dcell);
    // c's entry of the monitor: the gradient reaching the step's new cell value (the state,
    // but for the part of it zoneout keeps from the previous step); then the i, f, g
    // gradients and c_{t-1}'s
    ln_kernels.lstm_cell_grads(H, gate, c_prev, zc, sq ? sq + 1 : nullptr, dc, dp_r);
    if (clip > 0) clamp_gradient(G, dp_r, clip);
    norm_input_grad(ln.h, G, dp_r, ln.gain_h, w + L.xhat_h(), w[L.rstd_h()], dg + r * G);
  };
  layer_norm_backward_loop<scalar_t>(s, w_hh, dh_state, reg.state, dg, row, grad_h0);
  if (reg.resets.flags && grad_h0) {
    dh_state.add_(dh0_reset);
    dc_state.add_(dc0_reset);
  }
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                         at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                         at::Tensor, at::Tensor>;

Grads layer_norm_lstm_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& ln_ih_weight, const std::optional<at::Tensor>& ln_hh_weight,
    const std::optional<at::Tensor>& ln_cell_weight, const std::optional<at::Tensor>& state_mask,
    const std::optional<at::Tensor>& zoneout_h, const std::optional<at::Tensor>& zoneout_c,
    const at::Tensor& output, const at::Tensor& workspace, bool reverse, double grad_clip,
    const std::optional<at::Tensor>& grad_cell_states, const std::optional<at::Tensor>& reset,
    bool record_norms, std::array<bool, 3> output_mask) {
  // GATEDRNN_ROW_WISE_PORTABLE=1: the ATen ops the CUDA build runs
  // (common/row_wise_portable.h)
  if (portable::enabled_on_cpu()) {
    return portable::layer_norm_lstm_backward(grad_output, grad_h_n, grad_c_n, input, batch_sizes,
                                              h0, c0, w_ih, w_hh, ln_ih_weight, ln_hh_weight,
                                              ln_cell_weight, state_mask, zoneout_h, zoneout_c,
                                              output, workspace, reverse, grad_clip,
                                              grad_cell_states, reset, record_norms, output_mask);
  }
  const GradsWanted wanted = GradsWanted::of(output_mask);
  const RnnShapes sh = check_layer_norm_args(kBackward, kGates, input, batch_sizes, h0, &c0,
                                             w_ih, w_hh, std::nullopt, std::nullopt, reverse);
  const Resets resets = resets_of(kBackward, reset, sh.schedule);
  check_grad_clip(kBackward, grad_clip);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, G = kGates * H;
  const Layout L{H};
  check_layer_norm_backward(kBackward, sh, L.width(), input, workspace, output, grad_output, h0,
                            grad_h_n);
  check_shape(kBackward, grad_c_n, "grad_c_n", c0.sizes(), "c0's shape");
  const bool with_cs = grad_cell_states.has_value() && grad_cell_states->defined();
  if (with_cs) {
    check_shape(kBackward, *grad_cell_states, "grad_cell_states", {s.rows, H},
                "rows, hidden_size");
  }
  const at::Tensor gx =
      layer_norm_param(kBackward, input, ln_ih_weight, "ln_ih_weight", G, true);
  const at::Tensor gh =
      layer_norm_param(kBackward, input, ln_hh_weight, "ln_hh_weight", G, true);
  const at::Tensor gc =
      layer_norm_param(kBackward, input, ln_cell_weight, "ln_cell_weight", H, true);
  const at::Tensor ws = workspace.contiguous();
  const at::Tensor x = input.contiguous().view({s.rows, sh.input_size});
  const auto opts = x.options();
  const at::Tensor out = output.contiguous().view({s.rows, H});
  const at::Tensor h0c = h0.contiguous(), c0c = c0.contiguous();
  const at::Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const at::Tensor go = grad_output.contiguous();
  at::Tensor dh_state = grad_h_n.contiguous().clone(), dc_state = grad_c_n.contiguous().clone();
  at::Tensor dpre = cached_empty({s.rows, G}, opts), dgh = cached_empty({s.rows, G}, opts);
  at::Tensor dlc = cached_empty({s.rows, H}, opts);
  at::Tensor grad_gc = at::empty({H}, opts), grad_bc = at::empty({H}, opts);
  LayerNormRnnGrads g;
  std::vector<at::Tensor> keep;
  StepNorms norms(record_norms, s.steps(), s.batch, 2);  // a part per row of a step
  const at::Tensor grad_cs = with_cs ? grad_cell_states->to(opts).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), kBackward, [&] {
    const Norms<scalar_t> ln{gx.const_data_ptr<scalar_t>(), gh.const_data_ptr<scalar_t>(),
                             gc.const_data_ptr<scalar_t>(), nullptr,
                             is_given(ln_ih_weight), is_given(ln_hh_weight),
                             is_given(ln_cell_weight)};
    const Regularizers<scalar_t> reg{
        mask_data<scalar_t>(kBackward, input, state_mask, "state_mask", s.batch, H, keep),
        mask_data<scalar_t>(kBackward, input, zoneout_h, "zoneout_h", s.rows, H, keep),
        mask_data<scalar_t>(kBackward, input, zoneout_c, "zoneout_c", s.rows, H, keep), resets};
    backward_impl<scalar_t>(s, H, go.const_data_ptr<scalar_t>(), c0c, whh, ln, reg,
                            scalar_t(grad_clip), ws, dh_state, dc_state, dpre, dgh, dlc,
                            with_cs ? grad_cs.const_data_ptr<scalar_t>() : nullptr, norms,
                            wanted.states);
    g = layer_norm_rnn_grads<scalar_t>(s, x, wih, out, h0c, ws,
                                       {L.width(), L.xhat_x(), L.xhat_h(), L.rstd_x()}, dpre,
                                       dpre, dgh, ln.gain_x, ln.x, reg.state, reg.resets,
                                       wanted);
    if (!wanted.weights) return;
    const scalar_t* wsp = ws.const_data_ptr<scalar_t>();
    const scalar_t* dl = dlc.const_data_ptr<scalar_t>();
    const int64_t W = L.width();
    column_sums<2, scalar_t>(s.rows, H, [&](int64_t r, int64_t j, double* v) {
      const scalar_t* w = wsp + r * W;
      v[0] += dl[r * H + j] * (w[L.cell() + j] - w[L.mean_c()]) * w[L.rstd_c()];
      v[1] += dl[r * H + j];
    }, {grad_gc.mutable_data_ptr<scalar_t>(), grad_bc.mutable_data_ptr<scalar_t>()});
  });
  if (!wanted.states) dh_state = dc_state = at::Tensor();
  if (!wanted.weights) grad_gc = grad_bc = at::Tensor();
  // The biases and the LN_x and LN_h shifts all add to the gate pre-activations: one
  // gradient, as separate tensors. Without LayerNorms the gains' and shifts' gradients are
  // meaningless (nobody asks for them). Those not made come back as [0] tensors.
  const auto made = [&](const at::Tensor& t) { return t.defined() ? t : not_wanted(input); };
  const auto copy = [&](const at::Tensor& t) { return made(t.defined() ? t.clone() : t); };
  return {shaped_like_input(made(g.grad_input), input), made(dh_state), made(dc_state),
          made(g.grad_w_ih), made(g.grad_w_hh), made(g.grad_b_ih), made(g.grad_b_hh),
          made(g.grad_gain_x), copy(g.grad_b_ih), made(g.grad_gain_h), copy(g.grad_b_ih),
          made(grad_gc), made(grad_bc), norms.result()};
}

}  // namespace

TORCH_LIBRARY_IMPL(gatedrnn, CPU, m) {
  m.impl("layer_norm_lstm_forward", &layer_norm_lstm_forward);
  m.impl("layer_norm_lstm_backward", &layer_norm_lstm_backward);
}

}  // namespace gatedrnn
