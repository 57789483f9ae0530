#pragma once
// The parts of the forward and backward passes that do not depend on the cell:
// the hoisted input projection, the previous-state gather, and the weight
// gradients computed as large GEMMs after the time loop.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>

#include "../common/blas.h"
#include "../common/sequence.h"

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
//   dgates_h: [R, G*H] (rows may be strided), out: [R, P] the states after each step,
//   h0: [N, P] -> [G*H, P]
// When every step has all N rows (padded input), h_prev is h0 followed by out
// shifted by one step, so two GEMMs read it in place; packed input gathers it.
template <typename scalar_t>
at::Tensor recurrent_weight_grad(const Schedule& s, const at::Tensor& dgates_h,
                                 const at::Tensor& out, const at::Tensor& h0) {
  const int64_t R = s.rows, N = s.batch, P = out.size(1);
  const bool all_full = std::all_of(s.sizes.begin(), s.sizes.end(),
                                    [&](int64_t n) { return n == N; });
  const int64_t GH = dgates_h.size(1), ld = dgates_h.stride(0);
  if (R == 0) return at::zeros({GH, P}, out.options());
  if (all_full) {
    // The first processed step (time 0, or T-1 in reverse) starts from h0.
    const int64_t first = s.reverse ? R - N : 0;
    at::Tensor g = matmul<scalar_t>(dgates_h.narrow(0, first, N), true, h0, false);
    if (R > N) {
      const int64_t d_start = s.reverse ? 0 : N, h_start = s.reverse ? N : 0;
      // g += dgates_h[d_start : d_start+R-N]^T @ out[h_start : h_start+R-N]
      gemm<scalar_t>(true, false, GH, P, R - N, scalar_t(1),
                     dgates_h.const_data_ptr<scalar_t>() + d_start * ld, ld,
                     out.const_data_ptr<scalar_t>() + h_start * P, P, scalar_t(1),
                     g.mutable_data_ptr<scalar_t>(), P);
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
  return matmul<scalar_t>(dgates_h, true, prev, false);
}

// Column sums of a contiguous [R, C] matrix as a GEMM with a row of ones, so they
// too are split only across columns (ATen's sum splits the rows when C is small).
template <typename scalar_t>
at::Tensor column_sums(const at::Tensor& a) {
  const at::Tensor ones = at::ones({1, a.size(0)}, a.options());
  return matmul<scalar_t>(ones, false, a, false).view({a.size(1)});
}

struct InputAndWeightGrads {
  at::Tensor grad_input, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh;
};

// The large GEMMs after the time loop (all through gemm(), so that they too give the
// same bits at any thread count), for cells whose input-side and hidden-side
// pre-activation gradients are one and the same (LSTM, RNN).
//   dgates: [R, G*H], x: [R, I], out: [R, P], h0: [N, P], w_ih: [G*H, I]
template <typename scalar_t>
InputAndWeightGrads input_and_weight_grads(const Schedule& s, const at::Tensor& dgates,
                                           const at::Tensor& x, const at::Tensor& out,
                                           const at::Tensor& h0, const at::Tensor& w_ih) {
  InputAndWeightGrads g;
  g.grad_input = matmul<scalar_t>(dgates, false, w_ih, false);
  g.grad_w_ih = matmul<scalar_t>(dgates, true, x, false);
  g.grad_w_hh = recurrent_weight_grad<scalar_t>(s, dgates, out, h0);
  g.grad_b_ih = column_sums<scalar_t>(dgates);
  g.grad_b_hh = g.grad_b_ih.clone();
  return g;
}

// The output laid out like the input: [T, N, P] when padded, [R, P] when packed.
inline at::Tensor shaped_like_input(const at::Tensor& flat, const at::Tensor& input) {
  if (input.dim() == 3) return flat.view({input.size(0), input.size(1), flat.size(1)});
  return flat;
}

}  // namespace gatedrnn
