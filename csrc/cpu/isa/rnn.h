#pragma once
// The Elman RNN's per-step pointwise passes (tanh or relu), built once per ISA
// (isa/rnn.cpp); the time loops around them are in cpu/rnn.cpp.
#include <cstdint>

#include "../capability.h"

namespace gatedrnn {

template <typename scalar_t>
struct RnnKernels {
  // One step's rows [0, n) for the units [u0, u0 + len) of one block:
  // h = act(pre + bias), written to h_out and h_next (all [n, H], at u0 + j).
  //   pre: [n, H] x @ w_ih^T + h @ w_hh^T; bias: [H] b_ih + b_hh
  void (*forward_units)(int64_t n, int64_t H, int64_t u0, int64_t len, bool relu,
                        const scalar_t* pre, const scalar_t* bias, scalar_t* h_out,
                        scalar_t* h_next);
  // One backward step's rows [0, n) for the units [u0, u0 + len) of one block, from the
  // step's output h alone (tanh' = 1 - h^2, relu' = [h > 0]):
  // dgates = act'(h) * (go + dh_state).
  //   h: [n, H] the step's output rows; go: [n, H] (leading dim go_ld) the loss's
  //   gradient w.r.t. them; dh_state: [N, H] dL/dh from later steps; dgates: [n, H]
  //   clip: > 0 clamps dgates to [-clip, clip] (recurrent_grad_clip; NaN stays NaN)
  //   sq: null, or [1] to which the squares of go + dh_state are added (the gradient-norm
  //       monitor)
  void (*backward_units)(int64_t n, int64_t H, int64_t u0, int64_t len, bool relu,
                         const scalar_t* h, const scalar_t* go, int64_t go_ld,
                         const scalar_t* dh_state, scalar_t* dgates, scalar_t clip,
                         double* sq);
};

GATEDRNN_CPU_KERNELS(RnnKernels, rnn_kernels)

}  // namespace gatedrnn
