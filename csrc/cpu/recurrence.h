#pragma once
// The parts of the forward and backward passes that do not depend on the cell:
// the hoisted input projection, the previous-state gather, and the weight
// gradients computed as large GEMMs after the time loop.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>

#include "../common/blas.h"
#include "../common/sequence.h"
#include "recurrent_gemm.h"

namespace gatedrnn {

// gates[r, 0:G*H] = x[r] @ w_ih^T for every row r of every step, written into
// a buffer of leading dimension ld_gates (the cell's workspace row).
//   x: [R, I], w_ih: [G*H, I], gates: [R, ld_gates]
template <typename scalar_t>
void input_projection(const at::Tensor& x, const at::Tensor& w_ih, scalar_t* gates,
                      int64_t ld_gates) {
  const int64_t R = x.size(0), I = x.size(1), GH = w_ih.size(0);
  gemm<scalar_t>(false, true, R, GH, I, scalar_t(1), x.const_data_ptr<scalar_t>(), I,
                 w_ih.const_data_ptr<scalar_t>(), I, scalar_t(0), gates, ld_gates);
}

// b_ih + b_hh as one vector (zeros where absent), so the pointwise pass adds one bias.
inline at::Tensor combined_bias(const c10::optional<at::Tensor>& b_ih,
                                const c10::optional<at::Tensor>& b_hh, int64_t size,
                                const at::TensorOptions& opts) {
  at::Tensor bias = at::zeros({size}, opts);
  if (b_ih.has_value() && b_ih->defined()) bias.add_(*b_ih);
  if (b_hh.has_value() && b_hh->defined()) bias.add_(*b_hh);
  return bias;
}

inline at::Tensor optional_bias(const c10::optional<at::Tensor>& b, int64_t size,
                                const at::TensorOptions& opts) {
  return (b.has_value() && b->defined()) ? b->contiguous() : at::zeros({size}, opts);
}

// The rows a step started from: the same sequences' rows at the previously
// processed step, or the initial state for rows whose sequence starts at this
// step (all rows at the first step; with packed reverse input, the rows that
// join late). Live rows that continue a sequence always form a prefix.
template <typename scalar_t>
struct PrevRows {
  const scalar_t* seq = nullptr;   // row 0 of the previous step
  int64_t seq_ld = 0;
  const scalar_t* init = nullptr;  // row 0 of the initial state
  int64_t init_ld = 0;
  int64_t from_seq = 0;            // rows [0, from_seq) continue a sequence

  const scalar_t* row(int64_t b) const {
    return b < from_seq ? seq + b * seq_ld : init + b * init_ld;
  }
};

// seq: [R, seq_ld] per-row states of every step, init: [N, init_ld].
template <typename scalar_t>
PrevRows<scalar_t> previous_rows(const Schedule& s, int64_t k, const scalar_t* seq,
                                 int64_t seq_ld, const scalar_t* init, int64_t init_ld) {
  PrevRows<scalar_t> p;
  p.init = init;
  p.init_ld = init_ld;
  if (k > 0) {
    const int64_t tp = s.time_at(k - 1);
    p.from_seq = std::min(s.sizes[s.time_at(k)], s.sizes[tp]);
    p.seq = seq + s.offsets[tp] * seq_ld;
    p.seq_ld = seq_ld;
  }
  return p;
}

// grad_w_hh = sum over steps of dgates_h[step]^T @ h_prev[step].
//   dgates_h: [R, G*H], out: [R, P] the states after each step, h0: [N, P] -> [G*H, P]
// When every step has all N rows (padded input), h_prev is h0 followed by out
// shifted by one step, so two GEMMs read it in place; packed input gathers it.
template <typename scalar_t>
at::Tensor recurrent_weight_grad(const Schedule& s, const at::Tensor& dgates_h,
                                 const at::Tensor& out, const at::Tensor& h0) {
  const int64_t R = s.rows, N = s.batch, P = out.size(1);
  const bool all_full = std::all_of(s.sizes.begin(), s.sizes.end(),
                                    [&](int64_t n) { return n == N; });
  if (R == 0) return at::zeros({dgates_h.size(1), P}, out.options());
  if (all_full) {
    // The first processed step (time 0, or T-1 in reverse) starts from h0.
    const int64_t first = s.reverse ? R - N : 0;
    at::Tensor g = at::mm(dgates_h.narrow(0, first, N).t(), h0);
    if (R > N) {
      const int64_t d_start = s.reverse ? 0 : N, h_start = s.reverse ? N : 0;
      g.addmm_(dgates_h.narrow(0, d_start, R - N).t(), out.narrow(0, h_start, R - N));
    }
    return g;
  }
  at::Tensor prev = at::empty({R, P}, out.options());
  scalar_t* dst = prev.mutable_data_ptr<scalar_t>();
  const scalar_t* seq = out.const_data_ptr<scalar_t>();
  const scalar_t* init = h0.const_data_ptr<scalar_t>();
  for (int64_t k = 0; k < s.steps(); ++k) {
    const int64_t t = s.time_at(k), n = s.sizes[t];
    const PrevRows<scalar_t> p = previous_rows(s, k, seq, P, init, P);
    scalar_t* d = dst + s.offsets[t] * P;
    if (p.from_seq > 0) std::memcpy(d, p.row(0), sizeof(scalar_t) * p.from_seq * P);
    if (n > p.from_seq)
      std::memcpy(d + p.from_seq * P, p.row(p.from_seq), sizeof(scalar_t) * (n - p.from_seq) * P);
  }
  return at::mm(dgates_h.t(), prev);
}

// The forward time loop shared by the cells whose step is "hg = h_prev @ w_hh^T, then a
// pointwise pass that reads hg and h_prev and writes h". Each thread owns a block of
// hidden units and runs the GEMM and the pointwise pass for it (BlockedRecurrentGemm);
// the next step's GEMM reads every unit of h, so h is double-buffered.
//   w_hh: [G*H, H], h_state: [N, H] in: h0, out: h_n
//   unit_pass(t, n, j0, j1, hg, hg_stride, h_prev, h_next): the pointwise pass over
//   rows [0, n) and units [j0, j1) of time index t, where hg[row*G*H + g*hg_stride + j]
//   is the recurrent pre-activation of gate g and unit j, and h_prev/h_next are [N, H].
template <typename scalar_t, typename UnitPass>
void forward_steps(const Schedule& s, int64_t gates, const at::Tensor& w_hh,
                   at::Tensor& h_state, const UnitPass& unit_pass) {
  const int64_t N = s.batch, H = w_hh.size(1);
  const BlockedRecurrentGemm<scalar_t> rec(gates, w_hh, N);
  at::Tensor hg = at::empty({N, gates * H}, w_hh.options());
  at::Tensor spare = at::empty_like(h_state);
  scalar_t* hgp = hg.mutable_data_ptr<scalar_t>();
  scalar_t* h_prev = h_state.mutable_data_ptr<scalar_t>();
  scalar_t* h_next = spare.mutable_data_ptr<scalar_t>();
  for (int64_t k = 0; k < s.steps(); ++k) {
    const int64_t t = s.time_at(k), n = s.sizes[t];
    // Rows not live at this step keep their state (finished or not yet started).
    if (n < N) std::memcpy(h_next + n * H, h_prev + n * H, sizeof(scalar_t) * (N - n) * H);
    at::parallel_for(0, rec.blocks(), 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        rec.run(b, n, h_prev, hgp);
        unit_pass(t, n, rec.begin(b), rec.end(b), rec.gate_ptr(b, hgp), rec.gate_stride(b),
                  h_prev, h_next);
      }
    });
    std::swap(h_prev, h_next);
  }
  if (h_prev != h_state.mutable_data_ptr<scalar_t>()) h_state.copy_(spare);
}

struct InputAndWeightGrads {
  at::Tensor grad_input, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh;
};

// The large GEMMs after the time loop.
//   dgates_x: [R, G*H] gradient of the input-side pre-activations
//   dgates_h: [R, G*H] gradient of the hidden-side pre-activations (may be dgates_x)
//   x: [R, I], out: [R, P], h0: [N, P], w_ih: [G*H, I]
template <typename scalar_t>
InputAndWeightGrads input_and_weight_grads(const Schedule& s, const at::Tensor& dgates_x,
                                           const at::Tensor& dgates_h, const at::Tensor& x,
                                           const at::Tensor& out, const at::Tensor& h0,
                                           const at::Tensor& w_ih) {
  InputAndWeightGrads g;
  g.grad_input = at::mm(dgates_x, w_ih);
  g.grad_w_ih = at::mm(dgates_x.t(), x);
  g.grad_w_hh = recurrent_weight_grad<scalar_t>(s, dgates_h, out, h0);
  g.grad_b_ih = dgates_x.sum(0);
  g.grad_b_hh = dgates_x.is_same(dgates_h) ? g.grad_b_ih.clone() : dgates_h.sum(0);
  return g;
}

// The output laid out like the input: [T, N, P] when padded, [R, P] when packed.
inline at::Tensor shaped_like_input(const at::Tensor& flat, const at::Tensor& input) {
  if (input.dim() == 3) return flat.view({input.size(0), input.size(1), flat.size(1)});
  return flat;
}

}  // namespace gatedrnn
