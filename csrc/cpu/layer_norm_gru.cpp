// The row-wise GRU over one direction of a (possibly packed) sequence, on the CPU: the
// layer-normalized GRU, and with its LayerNorms left out the plain GRU where a regularizer
// needs the time loop. Gate order r, z, n as torch.nn.GRU's; each LayerNorm is over the
// whole 3H row, with its own gain and shift:
//   gx = LN_x(W_ih x) + b_ih,  gh = LN_h(W_hh (m h)) + b_hh   (m: the state mask, or 1)
//   r = s(gx_r + gh_r), z = s(gx_z + gh_z), n = tanh(gx_n + r gh_n),  h~ = (1 - z) n + z h
//   h' = d h + (1 - d) h~                                      (zoneout, d = 0 where off)
// The loops are layer_norm_rnn.h's; this file has the cell's pointwise passes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "../common/row_wise_portable.h"
#include "layer_norm_rnn.h"

namespace gatedrnn {
namespace {

constexpr int64_t kGates = 3;
constexpr const char* kForward = "gatedrnn.layer_norm_gru_forward";
constexpr const char* kBackward = "gatedrnn.layer_norm_gru_backward";

using Layout = LayerNormGruLayout;

//   x: [R, I], w_ih: [3H, I], w_hh: [3H, H]; gain_x, gain_h: [3H]; shift_x, shift_h: [3H]
//   b_ih + LN_x's shift, b_hh + LN_h's; out: [R, H], h_state: [N, H] (initial in, final
//   out); ws: [R, width] or undefined (inference)
template <typename scalar_t>
void forward_impl(const Schedule& s, int64_t H, const at::Tensor& x, const at::Tensor& w_ih,
                  const at::Tensor& w_hh, const scalar_t* gain_x, const scalar_t* gain_h,
                  const scalar_t* shift_x, const scalar_t* shift_h, bool norm_x, bool norm_h,
                  const Regularizers<scalar_t>& reg, at::Tensor& out, at::Tensor& h_state,
                  at::Tensor& ws) {
  const Layout L{H};
  const int64_t G = kGates * H, N = s.batch;
  at::Tensor xhat = ws.defined() ? ws : cached_empty({s.rows, G}, x.options());
  const int64_t xhat_ld = xhat.size(1);
  scalar_t* xh = xhat.mutable_data_ptr<scalar_t>();
  scalar_t* wsp = ws.defined() ? ws.mutable_data_ptr<scalar_t>() : nullptr;
  normalized_input_projection<scalar_t>(x, w_ih, norm_x, xh, xhat_ld,
                                        wsp ? wsp + L.rstd_x() : nullptr, L.width());
  at::Tensor gh = at::empty({N, G}, x.options());
  scalar_t* hs = h_state.mutable_data_ptr<scalar_t>();
  // The GEMM reads m h: a masked copy of the state where there is a state mask.
  at::Tensor masked = reg.state ? h_state * at::from_blob(const_cast<scalar_t*>(reg.state),
                                                          {N, H}, h_state.options())
                                : h_state;
  scalar_t* hm = masked.mutable_data_ptr<scalar_t>();
  scalar_t* outp = out.mutable_data_ptr<scalar_t>();
  const ActivationKernels<scalar_t>& act = activation_kernels<scalar_t>();
  const auto row = [&](int64_t k, int64_t b, int64_t r, const scalar_t* a, scalar_t* scratch) {
    scalar_t* w = wsp ? wsp + r * L.width() : scratch;
    const scalar_t* xx = xh + r * xhat_ld;
    scalar_t* xhh = w + L.xhat_h();
    scalar_t* gate = w + L.gates();
    scalar_t* hn = w + L.hidden_n();
    scalar_t* h = hs + b * H;
    const auto [mean_h, rstd_h] = norm_h ? row_stats(a, G) : std::pair<scalar_t, scalar_t>{0, 1};
    for (int64_t j = 0; j < G; ++j) xhh[j] = (a[j] - mean_h) * rstd_h;
    const auto in_x = [&](int64_t j) { return gain_x[j] * xx[j] + shift_x[j]; };
    const auto in_h = [&](int64_t j) { return gain_h[j] * xhh[j] + shift_h[j]; };
    for (int64_t j = 0; j < 2 * H; ++j) gate[j] = in_x(j) + in_h(j);
    act.sigmoid(2 * H, gate, gate);
    for (int64_t j = 0; j < H; ++j) {
      hn[j] = in_h(2 * H + j);
      gate[2 * H + j] = in_x(2 * H + j) + gate[j] * hn[j];
    }
    act.tanh(H, gate + 2 * H, gate + 2 * H);
    const scalar_t* d = reg.zoneout_h ? reg.zoneout_h + r * H : nullptr;
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t zg = gate[H + j], ng = gate[2 * H + j];
      const scalar_t h_new = (scalar_t(1) - zg) * ng + zg * h[j];
      h[j] = d ? d[j] * h[j] + (scalar_t(1) - d[j]) * h_new : h_new;
      outp[r * H + j] = h[j];
    }
    // a row that restarts at the next step carries h0 into it instead (resets)
    if (reg.resets.at(s, k + 1, b)) std::copy(reg.h0 + b * H, reg.h0 + (b + 1) * H, h);
    if (reg.state) {
      for (int64_t j = 0; j < H; ++j) hm[b * H + j] = h[j] * reg.state[b * H + j];
    }
    w[L.rstd_h()] = rstd_h;
  };
  layer_norm_forward_loop<scalar_t>(s, w_hh, hm, gh.mutable_data_ptr<scalar_t>(), L.width(),
                                    row);
}

at::Tensor shift_of(const std::optional<at::Tensor>& bias, const at::Tensor& ln_bias,
                    int64_t size, const at::TensorOptions& opts) {
  at::Tensor shift = optional_bias(bias, size, opts).clone();
  if (ln_bias.defined()) shift.add_(ln_bias);
  return shift;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_gru_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& ln_ih_weight,
    const std::optional<at::Tensor>& ln_ih_bias, const std::optional<at::Tensor>& ln_hh_weight,
    const std::optional<at::Tensor>& ln_hh_bias, const std::optional<at::Tensor>& state_mask,
    const std::optional<at::Tensor>& zoneout_h, bool reverse, bool need_workspace,
    double /*grad_clip: for autograd*/, const std::optional<at::Tensor>& reset) {
  // GATEDRNN_ROW_WISE_PORTABLE=1: the ATen ops the CUDA build runs
  // (common/row_wise_portable.h)
  if (portable::enabled_on_cpu()) {
    return portable::layer_norm_gru_forward(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh,
                                            ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias,
                                            state_mask, zoneout_h, reverse, need_workspace,
                                            /*grad_clip: unused*/ 0.0, reset);
  }
  const RnnShapes sh = check_layer_norm_args(kForward, kGates, input, batch_sizes, h0, nullptr,
                                             w_ih, w_hh, b_ih, b_hh, reverse);
  const Resets resets = resets_of(kForward, reset, sh.schedule);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, G = kGates * H;
  check_shift_has_gain(kForward, ln_ih_weight, ln_ih_bias, "ln_ih_bias");
  check_shift_has_gain(kForward, ln_hh_weight, ln_hh_bias, "ln_hh_bias");
  const at::Tensor gx = layer_norm_param(kForward, input, ln_ih_weight, "ln_ih_weight", G, true);
  const at::Tensor bx = layer_norm_param(kForward, input, ln_ih_bias, "ln_ih_bias", G, false);
  const at::Tensor gh = layer_norm_param(kForward, input, ln_hh_weight, "ln_hh_weight", G, true);
  const at::Tensor bh = layer_norm_param(kForward, input, ln_hh_bias, "ln_hh_bias", G, false);
  const at::Tensor x = input.contiguous().view({s.rows, sh.input_size});
  const auto opts = x.options();
  const at::Tensor shift_x = shift_of(b_ih, bx, G, opts), shift_h = shift_of(b_hh, bh, G, opts);
  at::Tensor out = cached_empty({s.rows, H}, opts);
  const at::Tensor h0c = h0.contiguous();
  at::Tensor h_state = h0c.clone();
  at::Tensor ws = cached_empty({need_workspace ? s.rows : 0, Layout{H}.width()}, opts);
  at::Tensor ws_arg = need_workspace ? ws : at::Tensor();
  const at::Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
  std::vector<at::Tensor> keep;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), kForward, [&] {
    const Regularizers<scalar_t> reg{
        mask_data<scalar_t>(kForward, input, state_mask, "state_mask", s.batch, H, keep),
        mask_data<scalar_t>(kForward, input, zoneout_h, "zoneout_h", s.rows, H, keep), nullptr,
        resets, h0c.const_data_ptr<scalar_t>()};
    forward_impl<scalar_t>(s, H, x, wih, whh, gx.const_data_ptr<scalar_t>(),
                           gh.const_data_ptr<scalar_t>(), shift_x.const_data_ptr<scalar_t>(),
                           shift_h.const_data_ptr<scalar_t>(), is_given(ln_ih_weight),
                           is_given(ln_hh_weight), reg, out, h_state, ws_arg);
  });
  return {shaped_like_input(out, input), h_state, ws};
}

// The gradients the backward loop leaves per row, for the sums and GEMMs after it:
//   dx_pre [R, 3H] of gx, dh_pre [R, 3H] of gh (both after their LayerNorms), dgh [R, 3H]
//   of W_hh m h (before LN_h)
template <typename scalar_t>
void backward_impl(const Schedule& s, int64_t H, const scalar_t* go, const at::Tensor& out,
                   const at::Tensor& h0, const at::Tensor& w_hh, const scalar_t* gain_h,
                   bool norm_h, const Regularizers<scalar_t>& reg, scalar_t clip,
                   const at::Tensor& ws,
                   at::Tensor& dh_state, at::Tensor& dx_pre, at::Tensor& dh_pre,
                   at::Tensor& dgh, StepNorms& norms, bool grad_h0) {
  const Layout L{H};
  const int64_t G = kGates * H;
  const scalar_t* wsp = ws.const_data_ptr<scalar_t>();
  const scalar_t* outp = out.const_data_ptr<scalar_t>();
  const scalar_t* h0p = h0.const_data_ptr<scalar_t>();
  scalar_t* dhs = dh_state.mutable_data_ptr<scalar_t>();
  // what reaches h0 through the rows that restarted from it (resets)
  at::Tensor dh0_reset = reg.resets.flags ? at::zeros_like(dh_state) : at::Tensor();
  scalar_t* dh0 = reg.resets.flags ? dh0_reset.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* dxp = dx_pre.mutable_data_ptr<scalar_t>();
  scalar_t* dhp = dh_pre.mutable_data_ptr<scalar_t>();
  scalar_t* dg = dgh.mutable_data_ptr<scalar_t>();
  const auto row = [&](int64_t k, int64_t b, int64_t r, const scalar_t* dh_g) {
    const scalar_t* w = wsp + r * L.width();
    const scalar_t* gate = w + L.gates();
    const scalar_t* hn = w + L.hidden_n();
    const scalar_t* zh = reg.zoneout_h ? reg.zoneout_h + r * H : nullptr;
    const scalar_t* m = reg.state ? reg.state + b * H : nullptr;
    const scalar_t* h_prev = previous_rows(s, k, outp, H, h0p, H, reg.resets).row(b);
    scalar_t* dx_r = dxp + r * G;
    scalar_t* dh_r = dhp + r * G;
    scalar_t* dh = dhs + b * H;
    double* sq = norms.at(s.time_at(k), b);
    // a row that restarted at step k + 1 fed h0 into it, not h_t: what came back is h0's
    const bool restarted = reg.resets.at(s, k + 1, b);
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t rg = gate[j], zg = gate[H + j], ng = gate[2 * H + j];
      const scalar_t later = dh[j] + (m ? m[j] : scalar_t(1)) * dh_g[j];  // from step k + 1
      if (restarted) dh0[b * H + j] += later;
      const scalar_t total = go[r * H + j] + (restarted ? scalar_t(0) : later);
      if (sq) sq[0] += double(total) * total;
      const scalar_t d = zh ? (scalar_t(1) - zh[j]) * total : total;  // into h~
      // the gradients of the gates' pre-activations, clamped to [-clip, clip] (clip > 0)
      const scalar_t dn = clamped(d * (scalar_t(1) - zg) * (scalar_t(1) - ng * ng), clip);
      const scalar_t dr = clamped(dn * hn[j] * rg * (scalar_t(1) - rg), clip);
      const scalar_t dz = clamped(d * (h_prev[j] - ng) * zg * (scalar_t(1) - zg), clip);
      dx_r[j] = dh_r[j] = dr;
      dx_r[H + j] = dh_r[H + j] = dz;
      dx_r[2 * H + j] = dn;
      dh_r[2 * H + j] = dn * rg;
      dh[j] = d * zg + (zh ? zh[j] * total : scalar_t(0));  // all but the GEMM's part
    }
    norm_input_grad(norm_h, G, dh_r, gain_h, w + L.xhat_h(), w[L.rstd_h()], dg + r * G);
  };
  layer_norm_backward_loop<scalar_t>(s, w_hh, dh_state, reg.state, dg, row, grad_h0);
  if (reg.resets.flags && grad_h0) dh_state.add_(dh0_reset);
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                         at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Grads layer_norm_gru_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                              const at::Tensor& input,
                              const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
                              const at::Tensor& w_ih, const at::Tensor& w_hh,
                              const std::optional<at::Tensor>& ln_ih_weight,
                              const std::optional<at::Tensor>& ln_hh_weight,
                              const std::optional<at::Tensor>& state_mask,
                              const std::optional<at::Tensor>& zoneout_h,
                              const at::Tensor& output, const at::Tensor& workspace,
                              bool reverse, double grad_clip,
                              const std::optional<at::Tensor>& reset, bool record_norms,
                              std::array<bool, 3> output_mask) {
  // GATEDRNN_ROW_WISE_PORTABLE=1: the ATen ops the CUDA build runs
  // (common/row_wise_portable.h)
  if (portable::enabled_on_cpu()) {
    return portable::layer_norm_gru_backward(grad_output, grad_h_n, input, batch_sizes, h0, w_ih,
                                             w_hh, ln_ih_weight, ln_hh_weight, state_mask,
                                             zoneout_h, output, workspace, reverse, grad_clip,
                                             reset, record_norms, output_mask);
  }
  const GradsWanted wanted = GradsWanted::of(output_mask);
  const RnnShapes sh = check_layer_norm_args(kBackward, kGates, input, batch_sizes, h0, nullptr,
                                             w_ih, w_hh, std::nullopt, std::nullopt, reverse);
  const Resets resets = resets_of(kBackward, reset, sh.schedule);
  check_grad_clip(kBackward, grad_clip);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, G = kGates * H;
  const Layout L{H};
  check_layer_norm_backward(kBackward, sh, L.width(), input, workspace,
                            output, grad_output, h0, grad_h_n);
  const at::Tensor gx =
      layer_norm_param(kBackward, input, ln_ih_weight, "ln_ih_weight", G, true);
  const at::Tensor gh =
      layer_norm_param(kBackward, input, ln_hh_weight, "ln_hh_weight", G, true);
  const at::Tensor ws = workspace.contiguous();
  const at::Tensor x = input.contiguous().view({s.rows, sh.input_size});
  const auto opts = x.options();
  const at::Tensor out = output.contiguous().view({s.rows, H});
  const at::Tensor h0c = h0.contiguous();
  const at::Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const at::Tensor go = grad_output.contiguous();
  at::Tensor dh_state = grad_h_n.contiguous().clone();
  at::Tensor dx_pre = cached_empty({s.rows, G}, opts), dh_pre = cached_empty({s.rows, G}, opts);
  at::Tensor dgh = cached_empty({s.rows, G}, opts);
  LayerNormRnnGrads g;
  std::vector<at::Tensor> keep;
  StepNorms norms(record_norms, s.steps(), s.batch, 1);  // a part per row of a step
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), kBackward, [&] {
    const Regularizers<scalar_t> reg{
        mask_data<scalar_t>(kBackward, input, state_mask, "state_mask", s.batch, H, keep),
        mask_data<scalar_t>(kBackward, input, zoneout_h, "zoneout_h", s.rows, H, keep), nullptr,
        resets};
    backward_impl<scalar_t>(s, H, go.const_data_ptr<scalar_t>(), out, h0c, whh,
                            gh.const_data_ptr<scalar_t>(), is_given(ln_hh_weight), reg,
                            scalar_t(grad_clip), ws, dh_state, dx_pre, dh_pre, dgh, norms,
                            wanted.states);
    g = layer_norm_rnn_grads<scalar_t>(s, x, wih, out, h0c, ws,
                                       {L.width(), L.xhat_x(), L.xhat_h(), L.rstd_x()}, dx_pre,
                                       dh_pre, dgh, gx.const_data_ptr<scalar_t>(),
                                       is_given(ln_ih_weight), reg.state, reg.resets, wanted);
  });
  if (!wanted.states) dh_state = at::Tensor();
  // Each LayerNorm's shift adds where its cell's bias does: the same gradient. Those not
  // made come back as [0] tensors.
  const auto made = [&](const at::Tensor& t) { return t.defined() ? t : not_wanted(input); };
  const auto copy = [&](const at::Tensor& t) { return made(t.defined() ? t.clone() : t); };
  return {shaped_like_input(made(g.grad_input), input), made(dh_state), made(g.grad_w_ih),
          made(g.grad_w_hh), made(g.grad_b_ih), made(g.grad_b_hh), made(g.grad_gain_x),
          copy(g.grad_b_ih), made(g.grad_gain_h), copy(g.grad_b_hh), norms.result()};
}

}  // namespace

TORCH_LIBRARY_IMPL(gatedrnn, CPU, m) {
  m.impl("layer_norm_gru_forward", &layer_norm_gru_forward);
  m.impl("layer_norm_gru_backward", &layer_norm_gru_backward);
}

}  // namespace gatedrnn
