// The row-wise ops in ATen ops (common/row_wise_portable.h): the time loop of
// csrc/cpu/layer_norm_lstm.cpp and layer_norm_gru.cpp with a step's rows as tensors, so
// that it runs on any device. Same math and order of operations as the CPU kernels' row
// passes (read them side by side), with the LayerNorms' statistics and the sums after the
// loop in float64, as there. Per step: one GEMM, a few dozen elementwise kernels and two
// or three row reductions; batch_sizes and the reset flags stay on the CPU (the loop reads
// them on the host) and a step's reset flags go to the device as a small copy.
#include "common/row_wise_portable.h"

#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/layer_norm_rnn.h"

namespace gatedrnn {
namespace portable {

bool enabled_on_cpu() {
  const char* v = std::getenv("GATEDRNN_ROW_WISE_PORTABLE");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

namespace {

using at::Tensor;
using std::optional;

// A LayerNorm over each row of a [n, width] tensor: the normalized rows, 1 / sqrt(biased
// variance + eps) and the mean ([n, 1] each), statistics in float64 as the CPU kernels'.
struct Normalized {
  Tensor xhat, rstd, mean;
};
Normalized normalized(const Tensor& a) {
  const Tensor ad = a.to(at::kDouble);
  const Tensor mean = ad.mean(1, true);
  const Tensor var = (ad - mean).square().mean(1, true);
  const Tensor m = mean.to(a.scalar_type());
  const Tensor rstd = (var + kLayerNormEps).rsqrt().to(a.scalar_type());
  return {(a - m) * rstd, rstd, m};
}
// a as it enters a cell without that LayerNorm.
Normalized unnormalized(const Tensor& a) {
  return {a, at::ones({a.size(0), 1}, a.options()), at::zeros({a.size(0), 1}, a.options())};
}

// The gradient of a LayerNorm's input from dy (its normalized output's, times gain):
// rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gain, the means in float64;
// dy * gain where the LayerNorm is left out.
Tensor norm_input_grad(bool normalized_, const Tensor& dy, const Tensor& gain, const Tensor& xhat,
                       const Tensor& rstd) {
  if (!normalized_) return dy * gain;
  const Tensor g = dy * gain;
  const Tensor gd = dy.to(at::kDouble) * gain.to(at::kDouble);
  const Tensor m1 = gd.mean(1, true).to(dy.scalar_type());
  const Tensor m2 = (gd * xhat.to(at::kDouble)).mean(1, true).to(dy.scalar_type());
  return rstd * (g - m1 - xhat * m2);
}

// Column sums of a [R, width] tensor in float64, in its dtype.
Tensor column_sum(const Tensor& a) { return a.to(at::kDouble).sum(0).to(a.scalar_type()); }

// An optional mask, checked as the CPU kernels check it; undefined where absent.
Tensor mask_of(const char* op, const Tensor& input, const optional<Tensor>& mask,
               const char* name, int64_t rows, int64_t cols) {
  if (!mask.has_value() || !mask->defined()) return Tensor();
  check_same_dtype(op, input, *mask, name);
  check_shape(op, *mask, name, {rows, cols}, "the mask's rows and columns");
  return mask->contiguous();
}

// The per-step view of an op's schedule, resets and masks.
class Steps {
 public:
  Steps(const Schedule& s, const Resets& resets, const Tensor& reset)
      : s_(s), resets_(resets), reset_(reset) {}
  int64_t count() const { return s_.steps(); }
  int64_t time(int64_t k) const { return s_.time_at(k); }
  int64_t rows(int64_t k) const { return s_.sizes[s_.time_at(k)]; }
  int64_t offset(int64_t k) const { return s_.offsets[s_.time_at(k)]; }
  // [rows(k), 1] bool on `device`: whether row b restarts at step k + 1 (its state after
  // step k is not carried); undefined where none can.
  Tensor restart_after(int64_t k, const at::Device& device) const {
    if (resets_.flags == nullptr || k + 1 >= count()) return Tensor();
    const int64_t n = rows(k), n1 = std::min(n, rows(k + 1));
    Tensor flags = at::zeros({n, 1}, at::kBool);
    flags.narrow(0, 0, n1).copy_(reset_.narrow(0, offset(k + 1), n1).unsqueeze(1));
    return flags.to(device);
  }
  // [rows(k), 1] bool: whether row b restarts at step k itself; undefined where none.
  Tensor restart_at(int64_t k, const at::Device& device) const {
    if (resets_.flags == nullptr) return Tensor();
    return reset_.narrow(0, offset(k), rows(k)).unsqueeze(1).to(device);
  }
  // The rows step k started from (PrevRows): the same sequences' rows of `seq` [R, P] at
  // the previous step, or init's [N, P] for rows that start (or restart) here.
  Tensor previous(int64_t k, const Tensor& seq, const Tensor& init) const {
    const int64_t n = rows(k);
    Tensor p = init.narrow(0, 0, n).clone();
    if (k > 0) {
      const int64_t from_seq = std::min(n, rows(k - 1));
      p.narrow(0, 0, from_seq).copy_(seq.narrow(0, offset(k - 1), from_seq));
    }
    const Tensor restart = restart_at(k, p.device());
    return restart.defined() ? at::where(restart, init.narrow(0, 0, n), p) : p;
  }
  // Every row's previous state, [R, P], times its sequence's mask where there is one.
  Tensor all_previous(const Tensor& out, const Tensor& init, const Tensor& mask) const {
    Tensor prev = at::empty({s_.rows, init.size(1)}, out.options());
    for (int64_t k = 0; k < count(); ++k) {
      const Tensor p = previous(k, out, init);
      prev.narrow(0, offset(k), rows(k))
          .copy_(mask.defined() ? p * mask.narrow(0, 0, rows(k)) : p);
    }
    return prev;
  }

 private:
  const Schedule& s_;
  const Resets& resets_;
  Tensor reset_;
};

Tensor given_or_empty(const optional<Tensor>& t) {
  return t.has_value() && t->defined() ? *t : Tensor();
}

// where(flag, a, b) with flag possibly undefined (then b).
Tensor unless(const Tensor& flag, const Tensor& a, const Tensor& b) {
  return flag.defined() ? at::where(flag, a, b) : b;
}

// Rows [off, off + n) of a per-row tensor (a zoneout mask), or undefined where it is.
Tensor rows_of(const Tensor& t, int64_t off, int64_t n) {
  return t.defined() ? t.narrow(0, off, n) : Tensor();
}
// d * prev + (1 - d) * next where d is defined (zoneout), else next.
Tensor zoned(const Tensor& d, const Tensor& prev, const Tensor& next) {
  return d.defined() ? d * prev + (1 - d) * next : next;
}

constexpr const char* kLstmForward = "gatedrnn.layer_norm_lstm_forward";
constexpr const char* kLstmBackward = "gatedrnn.layer_norm_lstm_backward";
constexpr const char* kGruForward = "gatedrnn.layer_norm_gru_forward";
constexpr const char* kGruBackward = "gatedrnn.layer_norm_gru_backward";

// The step norms' result: [T, kinds] float64 on the input's device, or [0, kinds].
Tensor step_norms(bool on, const Schedule& s, int64_t kinds, const Tensor& input) {
  return at::zeros({on ? s.steps() : 0, kinds}, input.options().dtype(at::kDouble));
}
void add_norm(Tensor& norms, int64_t t, int64_t kind, const Tensor& g) {
  if (norms.size(0) > 0) norms.select(0, t).select(0, kind).add_(g.to(at::kDouble).square().sum());
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> layer_norm_lstm_forward(
    const Tensor& input, const optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
    const optional<Tensor>& b_hh, const optional<Tensor>& ln_ih_weight,
    const optional<Tensor>& ln_ih_bias, const optional<Tensor>& ln_hh_weight,
    const optional<Tensor>& ln_hh_bias, const optional<Tensor>& ln_cell_weight,
    const optional<Tensor>& ln_cell_bias, const optional<Tensor>& state_mask,
    const optional<Tensor>& zoneout_h, const optional<Tensor>& zoneout_c, bool reverse,
    bool need_workspace, double /*grad_clip: for autograd*/, const optional<Tensor>& reset) {
  const char* op = kLstmForward;
  const RnnShapes sh = check_layer_norm_args(op, 4, input, batch_sizes, h0, &c0, w_ih, w_hh, b_ih,
                                             b_hh, reverse);
  const c10::OptionalDeviceGuard guard(at::device_of(input));
  const Resets resets = resets_of(op, reset, sh.schedule);
  const Schedule& s = sh.schedule;
  const Steps steps(s, resets, given_or_empty(reset));
  const int64_t H = sh.hidden_size, G = 4 * H, N = s.batch;
  const LayerNormLstmLayout L{H};
  check_shift_has_gain(op, ln_ih_weight, ln_ih_bias, "ln_ih_bias");
  check_shift_has_gain(op, ln_hh_weight, ln_hh_bias, "ln_hh_bias");
  check_shift_has_gain(op, ln_cell_weight, ln_cell_bias, "ln_cell_bias");
  const Tensor gx = layer_norm_param(op, input, ln_ih_weight, "ln_ih_weight", G, true);
  const Tensor bx = layer_norm_param(op, input, ln_ih_bias, "ln_ih_bias", G, false);
  const Tensor gh = layer_norm_param(op, input, ln_hh_weight, "ln_hh_weight", G, true);
  const Tensor bh = layer_norm_param(op, input, ln_hh_bias, "ln_hh_bias", G, false);
  const Tensor gc = layer_norm_param(op, input, ln_cell_weight, "ln_cell_weight", H, true);
  const Tensor bc = layer_norm_param(op, input, ln_cell_bias, "ln_cell_bias", H, false);
  const Tensor mask = mask_of(op, input, state_mask, "state_mask", N, H);
  const Tensor zh = mask_of(op, input, zoneout_h, "zoneout_h", s.rows, H);
  const Tensor zc = mask_of(op, input, zoneout_c, "zoneout_c", s.rows, H);
  const bool ln_x = is_given(ln_ih_weight), ln_h = is_given(ln_hh_weight),
             ln_c = is_given(ln_cell_weight);
  const Tensor x = input.contiguous().view({s.rows, sh.input_size});
  const auto opts = x.options();
  Tensor shift = combined_bias(b_ih, b_hh, G, opts);
  if (bx.defined()) shift.add_(bx);
  if (bh.defined()) shift.add_(bh);
  const Tensor h0c = h0.contiguous(), c0c = c0.contiguous();
  Tensor h = h0c.clone(), c = c0c.clone();
  Tensor out = at::empty({s.rows, H}, opts);
  Tensor ws = at::empty({need_workspace ? s.rows : 0, L.width()}, opts);
  const Tensor zx = at::mm(x, w_ih.t());
  const Normalized in_x = ln_x ? normalized(zx) : unnormalized(zx);
  const Tensor pre_x = gx * in_x.xhat;
  if (need_workspace) {
    ws.narrow(1, L.xhat_x(), G).copy_(in_x.xhat);
    ws.narrow(1, L.rstd_x(), 1).copy_(in_x.rstd);
  }
  for (int64_t k = 0; k < steps.count(); ++k) {
    const int64_t n = steps.rows(k), off = steps.offset(k);
    Tensor hs = h.narrow(0, 0, n), cs = c.narrow(0, 0, n);
    const Tensor a = at::mm(mask.defined() ? hs * mask.narrow(0, 0, n) : hs, w_hh.t());
    const Normalized in_h = ln_h ? normalized(a) : unnormalized(a);
    const Tensor gate = pre_x.narrow(0, off, n) + gh * in_h.xhat + shift;
    const Tensor i = gate.narrow(1, 0, H).sigmoid(), f = gate.narrow(1, H, H).sigmoid(),
                 g = gate.narrow(1, 2 * H, H).tanh(), o = gate.narrow(1, 3 * H, H).sigmoid();
    const Tensor cell = f * cs + i * g;
    const Tensor c_out = zoned(rows_of(zc, off, n), cs, cell);
    const Normalized in_c = ln_c ? normalized(cell) : unnormalized(cell);
    Tensor lc = gc * (cell - in_c.mean) * in_c.rstd;
    if (bc.defined()) lc = lc + bc;
    const Tensor tl = lc.tanh();
    const Tensor h_out = zoned(rows_of(zh, off, n), hs, o * tl);
    out.narrow(0, off, n).copy_(h_out);
    if (need_workspace) {
      Tensor w = ws.narrow(0, off, n);
      w.narrow(1, L.xhat_h(), G).copy_(in_h.xhat);
      w.narrow(1, L.gates(), G).copy_(at::cat({i, f, g, o}, 1));
      w.narrow(1, L.cell(), H).copy_(cell);
      w.narrow(1, L.tanh_lc(), H).copy_(tl);
      w.narrow(1, L.c_out(), H).copy_(c_out);
      w.narrow(1, L.rstd_h(), 1).copy_(in_h.rstd);
      w.narrow(1, L.rstd_c(), 1).copy_(in_c.rstd);
      w.narrow(1, L.mean_c(), 1).copy_(in_c.mean);
    }
    // a row that restarts at the next step carries h0 and c0 into it instead (resets)
    const Tensor restart = steps.restart_after(k, h.device());
    hs.copy_(unless(restart, h0c.narrow(0, 0, n), h_out));
    cs.copy_(unless(restart, c0c.narrow(0, 0, n), c_out));
  }
  return {shaped_like_input(out, input), h, c, ws};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
           Tensor, Tensor, Tensor>
layer_norm_lstm_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& input, const optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& ln_ih_weight,
    const optional<Tensor>& ln_hh_weight, const optional<Tensor>& ln_cell_weight,
    const optional<Tensor>& state_mask, const optional<Tensor>& zoneout_h,
    const optional<Tensor>& zoneout_c, const Tensor& output, const Tensor& workspace,
    bool reverse, double grad_clip, const optional<Tensor>& grad_cell_states,
    const optional<Tensor>& reset, bool record_norms, std::array<bool, 3> output_mask) {
  const char* op = kLstmBackward;
  const GradsWanted wanted = GradsWanted::of(output_mask);
  const RnnShapes sh = check_layer_norm_args(op, 4, input, batch_sizes, h0, &c0, w_ih, w_hh,
                                             std::nullopt, std::nullopt, reverse);
  const c10::OptionalDeviceGuard guard(at::device_of(input));
  const Resets resets = resets_of(op, reset, sh.schedule);
  check_grad_clip(op, grad_clip);
  const Schedule& s = sh.schedule;
  const Steps steps(s, resets, given_or_empty(reset));
  const int64_t H = sh.hidden_size, G = 4 * H, N = s.batch;
  const LayerNormLstmLayout L{H};
  check_layer_norm_backward(op, sh, L.width(), input, workspace, output, grad_output, h0,
                            grad_h_n);
  check_shape(op, grad_c_n, "grad_c_n", c0.sizes(), "c0's shape");
  const bool with_cs = grad_cell_states.has_value() && grad_cell_states->defined();
  if (with_cs) {
    check_shape(op, *grad_cell_states, "grad_cell_states", {s.rows, H}, "rows, hidden_size");
  }
  const Tensor gx = layer_norm_param(op, input, ln_ih_weight, "ln_ih_weight", G, true);
  const Tensor gh = layer_norm_param(op, input, ln_hh_weight, "ln_hh_weight", G, true);
  const Tensor gc = layer_norm_param(op, input, ln_cell_weight, "ln_cell_weight", H, true);
  const Tensor mask = mask_of(op, input, state_mask, "state_mask", N, H);
  const Tensor zh = mask_of(op, input, zoneout_h, "zoneout_h", s.rows, H);
  const Tensor zc = mask_of(op, input, zoneout_c, "zoneout_c", s.rows, H);
  const bool ln_x = is_given(ln_ih_weight), ln_h = is_given(ln_hh_weight),
             ln_c = is_given(ln_cell_weight);
  const Tensor ws = workspace.contiguous();
  const Tensor x = input.contiguous().view({s.rows, sh.input_size});
  const auto opts = x.options();
  const Tensor out = output.contiguous().view({s.rows, H});
  const Tensor go = grad_output.contiguous().view({s.rows, H});
  const Tensor h0c = h0.contiguous(), c0c = c0.contiguous();
  const Tensor grad_cs = with_cs ? grad_cell_states->to(opts).contiguous() : Tensor();
  Tensor dh = grad_h_n.contiguous().clone(), dc = grad_c_n.contiguous().clone();
  Tensor dh_gemm = at::zeros({N, H}, opts);
  Tensor dh0_reset = resets.flags ? at::zeros_like(dh) : Tensor();
  Tensor dc0_reset = resets.flags ? at::zeros_like(dc) : Tensor();
  Tensor dpre = at::empty({s.rows, G}, opts), dgh = at::empty({s.rows, G}, opts);
  Tensor dlc = at::empty({s.rows, H}, opts);
  Tensor norms = step_norms(record_norms, s, 2, input);
  const Tensor c_seq = ws.narrow(1, L.c_out(), H);
  for (int64_t k = steps.count() - 1; k >= 0; --k) {
    const int64_t n = steps.rows(k), off = steps.offset(k), t = steps.time(k);
    const Tensor w = ws.narrow(0, off, n);
    const Tensor i = w.narrow(1, L.gates(), H), f = w.narrow(1, L.gates() + H, H),
                 g = w.narrow(1, L.gates() + 2 * H, H), o = w.narrow(1, L.gates() + 3 * H, H);
    const Tensor cell = w.narrow(1, L.cell(), H), tl = w.narrow(1, L.tanh_lc(), H);
    const Tensor rstd_c = w.narrow(1, L.rstd_c(), 1), mean_c = w.narrow(1, L.mean_c(), 1);
    const Tensor c_prev = steps.previous(k, c_seq, c0c);
    const Tensor zh_r = rows_of(zh, off, n), zc_r = rows_of(zc, off, n);
    Tensor dhs = dh.narrow(0, 0, n), dcs = dc.narrow(0, 0, n);
    const Tensor dh_g = dh_gemm.narrow(0, 0, n);
    const Tensor later = dhs + (mask.defined() ? mask.narrow(0, 0, n) * dh_g : dh_g);
    // a row that restarted at step k + 1 fed h0 and c0 into it, not h_t and c_t: what came
    // back is theirs
    const Tensor restart = steps.restart_after(k, dh.device());
    if (restart.defined()) {
      dh0_reset.narrow(0, 0, n).add_(at::where(restart, later, at::zeros_like(later)));
      dc0_reset.narrow(0, 0, n).add_(at::where(restart, dcs, at::zeros_like(dcs)));
      dcs.masked_fill_(restart, 0);
    }
    // the gradient reaching the state c'_t directly (return_states), then from step t + 1
    if (with_cs) dcs.add_(grad_cs.narrow(0, off, n));
    const Tensor d = go.narrow(0, off, n) + unless(restart, at::zeros_like(later), later);
    add_norm(norms, t, 0, d);
    const Tensor dnew = zh_r.defined() ? (1 - zh_r) * d : d;  // into h~
    dhs.copy_(zh_r.defined() ? zh_r * d : at::zeros_like(d));
    const Tensor dl = dnew * o * (1 - tl * tl);
    const Tensor dp_o = dnew * tl * o * (1 - o);
    const Tensor xhat_c = (cell - mean_c) * rstd_c;
    Tensor dcell = norm_input_grad(ln_c, dl, gc, xhat_c, rstd_c);
    dcell = dcell + (zc_r.defined() ? (1 - zc_r) * dcs : dcs);
    add_norm(norms, t, 1, dcell);
    const Tensor carried = zc_r.defined() ? zc_r * dcs : Tensor();
    const Tensor dp_f = dcell * c_prev * f * (1 - f);
    const Tensor dp_g = dcell * i * (1 - g * g);
    const Tensor dp_i = dcell * g * i * (1 - i);
    const Tensor dc_new = carried.defined() ? dcell * f + carried : dcell * f;
    dcs.copy_(dc_new);
    Tensor dp = at::cat({dp_i, dp_f, dp_g, dp_o}, 1);
    if (grad_clip > 0) dp.clamp_(-grad_clip, grad_clip);
    const Tensor dg = norm_input_grad(ln_h, dp, gh, w.narrow(1, L.xhat_h(), G),
                                      w.narrow(1, L.rstd_h(), 1));
    dpre.narrow(0, off, n).copy_(dp);
    dgh.narrow(0, off, n).copy_(dg);
    dlc.narrow(0, off, n).copy_(dl);
    // dh_gemm[:n] = dgh[rows] @ w_hh      [n, G] x [G, H]; after the last step, h0's, only
    // if wanted
    if (k > 0 || wanted.states) dh_gemm.narrow(0, 0, n).copy_(at::mm(dg, w_hh));
  }
  if (wanted.states) {
    dh.add_(mask.defined() ? dh_gemm * mask : dh_gemm);
    if (resets.flags) {
      dh.add_(dh0_reset);
      dc.add_(dc0_reset);
    }
  }
  const Tensor xhat_x = ws.narrow(1, L.xhat_x(), G);
  const Tensor dgx = norm_input_grad(ln_x, dpre, gx, xhat_x, ws.narrow(1, L.rstd_x(), 1));
  const Tensor grad_input =
      wanted.input ? shaped_like_input(at::mm(dgx, w_ih), input) : not_wanted(input);
  if (!wanted.states) {  // two tensors, not one: results must not alias each other
    dh = not_wanted(input);
    dc = not_wanted(input);
  }
  if (!wanted.weights) {
    return {grad_input,          dh,
            dc,                  not_wanted(input),
            not_wanted(input),   not_wanted(input),
            not_wanted(input),   not_wanted(input),
            not_wanted(input),   not_wanted(input),
            not_wanted(input),   not_wanted(input),
            not_wanted(input),   norms};
  }
  const Tensor h_prev = steps.all_previous(out, h0c, mask);
  const Tensor grad_b = column_sum(dpre);
  const Tensor xhat_c = (ws.narrow(1, L.cell(), H) - ws.narrow(1, L.mean_c(), 1)) *
                        ws.narrow(1, L.rstd_c(), 1);
  return {grad_input,
          dh,
          dc,
          at::mm(dgx.t(), x),
          at::mm(dgh.t(), h_prev),
          grad_b,
          grad_b.clone(),
          column_sum(dpre * xhat_x),
          grad_b.clone(),
          column_sum(dpre * ws.narrow(1, L.xhat_h(), G)),
          grad_b.clone(),
          column_sum(dlc * xhat_c),
          column_sum(dlc),
          norms};
}

std::tuple<Tensor, Tensor, Tensor> layer_norm_gru_forward(
    const Tensor& input, const optional<Tensor>& batch_sizes, const Tensor& h0,
    const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
    const optional<Tensor>& b_hh, const optional<Tensor>& ln_ih_weight,
    const optional<Tensor>& ln_ih_bias, const optional<Tensor>& ln_hh_weight,
    const optional<Tensor>& ln_hh_bias, const optional<Tensor>& state_mask,
    const optional<Tensor>& zoneout_h, bool reverse, bool need_workspace,
    double /*grad_clip: for autograd*/, const optional<Tensor>& reset) {
  const char* op = kGruForward;
  const RnnShapes sh = check_layer_norm_args(op, 3, input, batch_sizes, h0, nullptr, w_ih, w_hh,
                                             b_ih, b_hh, reverse);
  const c10::OptionalDeviceGuard guard(at::device_of(input));
  const Resets resets = resets_of(op, reset, sh.schedule);
  const Schedule& s = sh.schedule;
  const Steps steps(s, resets, given_or_empty(reset));
  const int64_t H = sh.hidden_size, G = 3 * H, N = s.batch;
  const LayerNormGruLayout L{H};
  check_shift_has_gain(op, ln_ih_weight, ln_ih_bias, "ln_ih_bias");
  check_shift_has_gain(op, ln_hh_weight, ln_hh_bias, "ln_hh_bias");
  const Tensor gx = layer_norm_param(op, input, ln_ih_weight, "ln_ih_weight", G, true);
  const Tensor bx = layer_norm_param(op, input, ln_ih_bias, "ln_ih_bias", G, false);
  const Tensor gh = layer_norm_param(op, input, ln_hh_weight, "ln_hh_weight", G, true);
  const Tensor bh = layer_norm_param(op, input, ln_hh_bias, "ln_hh_bias", G, false);
  const Tensor mask = mask_of(op, input, state_mask, "state_mask", N, H);
  const Tensor zh = mask_of(op, input, zoneout_h, "zoneout_h", s.rows, H);
  const bool ln_x = is_given(ln_ih_weight), ln_h = is_given(ln_hh_weight);
  const Tensor x = input.contiguous().view({s.rows, sh.input_size});
  const auto opts = x.options();
  Tensor shift_x = optional_bias(b_ih, G, opts).clone();
  Tensor shift_h = optional_bias(b_hh, G, opts).clone();
  if (bx.defined()) shift_x.add_(bx);
  if (bh.defined()) shift_h.add_(bh);
  const Tensor h0c = h0.contiguous();
  Tensor h = h0c.clone();
  Tensor out = at::empty({s.rows, H}, opts);
  Tensor ws = at::empty({need_workspace ? s.rows : 0, L.width()}, opts);
  const Tensor zx = at::mm(x, w_ih.t());
  const Normalized in_x = ln_x ? normalized(zx) : unnormalized(zx);
  const Tensor pre_x = gx * in_x.xhat + shift_x;
  if (need_workspace) {
    ws.narrow(1, L.xhat_x(), G).copy_(in_x.xhat);
    ws.narrow(1, L.rstd_x(), 1).copy_(in_x.rstd);
  }
  for (int64_t k = 0; k < steps.count(); ++k) {
    const int64_t n = steps.rows(k), off = steps.offset(k);
    Tensor hs = h.narrow(0, 0, n);
    const Tensor a = at::mm(mask.defined() ? hs * mask.narrow(0, 0, n) : hs, w_hh.t());
    const Normalized in_h = ln_h ? normalized(a) : unnormalized(a);
    const Tensor pre_h = gh * in_h.xhat + shift_h;
    const Tensor px = pre_x.narrow(0, off, n);
    const Tensor rz = (px.narrow(1, 0, 2 * H) + pre_h.narrow(1, 0, 2 * H)).sigmoid();
    const Tensor r = rz.narrow(1, 0, H), z = rz.narrow(1, H, H);
    const Tensor hn = pre_h.narrow(1, 2 * H, H);
    const Tensor ng = (px.narrow(1, 2 * H, H) + r * hn).tanh();
    const Tensor h_out = zoned(rows_of(zh, off, n), hs, (1 - z) * ng + z * hs);
    out.narrow(0, off, n).copy_(h_out);
    if (need_workspace) {
      Tensor w = ws.narrow(0, off, n);
      w.narrow(1, L.xhat_h(), G).copy_(in_h.xhat);
      w.narrow(1, L.gates(), 2 * H).copy_(rz);
      w.narrow(1, L.gates() + 2 * H, H).copy_(ng);
      w.narrow(1, L.hidden_n(), H).copy_(hn);
      w.narrow(1, L.rstd_h(), 1).copy_(in_h.rstd);
    }
    // a row that restarts at the next step carries h0 into it instead (resets)
    hs.copy_(unless(steps.restart_after(k, h.device()), h0c.narrow(0, 0, n), h_out));
  }
  return {shaped_like_input(out, input), h, ws};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
layer_norm_gru_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
                        const optional<Tensor>& batch_sizes, const Tensor& h0,
                        const Tensor& w_ih, const Tensor& w_hh,
                        const optional<Tensor>& ln_ih_weight,
                        const optional<Tensor>& ln_hh_weight,
                        const optional<Tensor>& state_mask, const optional<Tensor>& zoneout_h,
                        const Tensor& output, const Tensor& workspace, bool reverse,
                        double grad_clip, const optional<Tensor>& reset, bool record_norms,
                        std::array<bool, 3> output_mask) {
  const char* op = kGruBackward;
  const GradsWanted wanted = GradsWanted::of(output_mask);
  const RnnShapes sh = check_layer_norm_args(op, 3, input, batch_sizes, h0, nullptr, w_ih, w_hh,
                                             std::nullopt, std::nullopt, reverse);
  const c10::OptionalDeviceGuard guard(at::device_of(input));
  const Resets resets = resets_of(op, reset, sh.schedule);
  check_grad_clip(op, grad_clip);
  const Schedule& s = sh.schedule;
  const Steps steps(s, resets, given_or_empty(reset));
  const int64_t H = sh.hidden_size, G = 3 * H, N = s.batch;
  const LayerNormGruLayout L{H};
  check_layer_norm_backward(op, sh, L.width(), input, workspace, output, grad_output, h0,
                            grad_h_n);
  const Tensor gx = layer_norm_param(op, input, ln_ih_weight, "ln_ih_weight", G, true);
  const Tensor gh = layer_norm_param(op, input, ln_hh_weight, "ln_hh_weight", G, true);
  const Tensor mask = mask_of(op, input, state_mask, "state_mask", N, H);
  const Tensor zh = mask_of(op, input, zoneout_h, "zoneout_h", s.rows, H);
  const bool ln_x = is_given(ln_ih_weight), ln_h = is_given(ln_hh_weight);
  const Tensor ws = workspace.contiguous();
  const Tensor x = input.contiguous().view({s.rows, sh.input_size});
  const auto opts = x.options();
  const Tensor out = output.contiguous().view({s.rows, H});
  const Tensor go = grad_output.contiguous().view({s.rows, H});
  const Tensor h0c = h0.contiguous();
  Tensor dh = grad_h_n.contiguous().clone();
  Tensor dh_gemm = at::zeros({N, H}, opts);
  Tensor dh0_reset = resets.flags ? at::zeros_like(dh) : Tensor();
  Tensor dx_pre = at::empty({s.rows, G}, opts), dh_pre = at::empty({s.rows, G}, opts);
  Tensor dgh = at::empty({s.rows, G}, opts);
  Tensor norms = step_norms(record_norms, s, 1, input);
  // the gradient of a gate's pre-activation, clamped to [-clip, clip] where clip > 0
  const auto clamped = [&](const Tensor& g) {
    return grad_clip > 0 ? g.clamp(-grad_clip, grad_clip) : g;
  };
  for (int64_t k = steps.count() - 1; k >= 0; --k) {
    const int64_t n = steps.rows(k), off = steps.offset(k), t = steps.time(k);
    const Tensor w = ws.narrow(0, off, n);
    const Tensor rg = w.narrow(1, L.gates(), H), zg = w.narrow(1, L.gates() + H, H),
                 ng = w.narrow(1, L.gates() + 2 * H, H), hn = w.narrow(1, L.hidden_n(), H);
    const Tensor zh_r = rows_of(zh, off, n);
    const Tensor h_prev = steps.previous(k, out, h0c);
    Tensor dhs = dh.narrow(0, 0, n);
    const Tensor dh_g = dh_gemm.narrow(0, 0, n);
    const Tensor later = dhs + (mask.defined() ? mask.narrow(0, 0, n) * dh_g : dh_g);
    // a row that restarted at step k + 1 fed h0 into it, not h_t: what came back is h0's
    const Tensor restart = steps.restart_after(k, dh.device());
    if (restart.defined()) {
      dh0_reset.narrow(0, 0, n).add_(at::where(restart, later, at::zeros_like(later)));
    }
    const Tensor total = go.narrow(0, off, n) + unless(restart, at::zeros_like(later), later);
    add_norm(norms, t, 0, total);
    const Tensor d = zh_r.defined() ? (1 - zh_r) * total : total;  // into h~
    const Tensor dn = clamped(d * (1 - zg) * (1 - ng * ng));
    const Tensor dr = clamped(dn * hn * rg * (1 - rg));
    const Tensor dz = clamped(d * (h_prev - ng) * zg * (1 - zg));
    const Tensor dx_r = at::cat({dr, dz, dn}, 1), dh_r = at::cat({dr, dz, dn * rg}, 1);
    dhs.copy_(zh_r.defined() ? d * zg + zh_r * total : d * zg);  // all but the GEMM's part
    const Tensor dg = norm_input_grad(ln_h, dh_r, gh, w.narrow(1, L.xhat_h(), G),
                                      w.narrow(1, L.rstd_h(), 1));
    dx_pre.narrow(0, off, n).copy_(dx_r);
    dh_pre.narrow(0, off, n).copy_(dh_r);
    dgh.narrow(0, off, n).copy_(dg);
    // dh_gemm[:n] = dgh[rows] @ w_hh      [n, G] x [G, H]; after the last step, h0's, only
    // if wanted
    if (k > 0 || wanted.states) dh_gemm.narrow(0, 0, n).copy_(at::mm(dg, w_hh));
  }
  if (wanted.states) {
    dh.add_(mask.defined() ? dh_gemm * mask : dh_gemm);
    if (resets.flags) dh.add_(dh0_reset);
  }
  const Tensor xhat_x = ws.narrow(1, L.xhat_x(), G);
  const Tensor dgx = norm_input_grad(ln_x, dx_pre, gx, xhat_x, ws.narrow(1, L.rstd_x(), 1));
  const Tensor grad_input =
      wanted.input ? shaped_like_input(at::mm(dgx, w_ih), input) : not_wanted(input);
  if (!wanted.states) dh = not_wanted(input);
  if (!wanted.weights) {
    return {grad_input,        dh,
            not_wanted(input), not_wanted(input),
            not_wanted(input), not_wanted(input),
            not_wanted(input), not_wanted(input),
            not_wanted(input), not_wanted(input),
            norms};
  }
  const Tensor h_prev = steps.all_previous(out, h0c, mask);
  const Tensor grad_b_ih = column_sum(dx_pre), grad_b_hh = column_sum(dh_pre);
  return {grad_input,
          dh,
          at::mm(dgx.t(), x),
          at::mm(dgh.t(), h_prev),
          grad_b_ih,
          grad_b_hh,
          column_sum(dx_pre * xhat_x),
          grad_b_ih.clone(),
          column_sum(dh_pre * ws.narrow(1, L.xhat_h(), G)),
          grad_b_hh.clone(),
          norms};
}

}  // namespace portable
}  // namespace gatedrnn
