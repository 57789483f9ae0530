#pragma once
// The parts of the forward and backward passes that do not depend on the cell:
// the hoisted input projection, the previous-state gather, and the weight
// gradients computed as large GEMMs after the time loop.
#include <ATen/ATen.h>

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

// For every row of every step, the state that step started from: the same
// sequence's state at the previously processed step, or init for rows whose
// sequence starts at this step (all rows at the first step; with packed
// reverse input, the rows that join late).
//   seq: [R, D] states after each step, init: [N, D] -> [R, D]
template <typename scalar_t>
at::Tensor previous_states(const Schedule& s, const scalar_t* seq, const at::Tensor& init,
                           int64_t D) {
  at::Tensor prev = at::empty({s.rows, D}, init.options());
  scalar_t* out = prev.mutable_data_ptr<scalar_t>();
  const scalar_t* h0 = init.const_data_ptr<scalar_t>();
  int64_t live_before = 0;
  for (int64_t k = 0; k < s.steps(); ++k) {
    const int64_t t = s.time_at(k), n = s.sizes[t];
    scalar_t* dst = out + s.offsets[t] * D;
    const int64_t from_seq = std::min(n, live_before);
    if (from_seq > 0) {
      const int64_t tp = s.time_at(k - 1);
      std::memcpy(dst, seq + s.offsets[tp] * D, sizeof(scalar_t) * from_seq * D);
    }
    if (n > from_seq) {
      std::memcpy(dst + from_seq * D, h0 + from_seq * D, sizeof(scalar_t) * (n - from_seq) * D);
    }
    live_before = n;
  }
  return prev;
}

struct InputAndWeightGrads {
  at::Tensor grad_input, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh;
};

// The large GEMMs after the time loop.
//   dgates_x: [R, G*H] gradient of the input-side pre-activations
//   dgates_h: [R, G*H] gradient of the hidden-side pre-activations
//   x: [R, I], h_prev: [R, P], w_ih: [G*H, I]
inline InputAndWeightGrads input_and_weight_grads(const at::Tensor& dgates_x,
                                                  const at::Tensor& dgates_h,
                                                  const at::Tensor& x,
                                                  const at::Tensor& h_prev,
                                                  const at::Tensor& w_ih) {
  InputAndWeightGrads g;
  g.grad_input = at::mm(dgates_x, w_ih);
  g.grad_w_ih = at::mm(dgates_x.t(), x);
  g.grad_w_hh = at::mm(dgates_h.t(), h_prev);
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
