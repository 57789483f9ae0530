#pragma once
// The LSTM's per-step pointwise passes, built once per ISA (isa/lstm.cpp); the time loops
// around them are in cpu/lstm.cpp. Gate order i, f, g, o; workspace row (5H): activated
// gates i, f, g, o, then the cell state c.
#include <cstdint>

#include "../capability.h"
#include "../prev_rows.h"

namespace gatedrnn {

template <typename scalar_t>
struct LstmKernels {
  // One step's rows [0, n) for the units [u0, u0 + len) of one block.
  //   pre: [n, 4 * len] (leading dim pre_ld) the block's x @ w_ih^T + h @ w_hh^T, gate g
  //        at columns g * len; bias: [4H] b_ih + b_hh
  //   c_state: [N, H]; ws: [n, 5H] the step's workspace rows, or null when no backward
  //   will read them; h_out, h_next: [n, *] (h_next may be null), written at u0 + j
  void (*forward_units)(int64_t n, int64_t H, int64_t u0, int64_t len, const scalar_t* pre,
                        int64_t pre_ld, const scalar_t* bias, scalar_t* c_state, scalar_t* ws,
                        int64_t ws_ld, scalar_t* h_out, int64_t h_out_ld, scalar_t* h_next,
                        int64_t h_next_ld);
  // One backward step's rows [0, n) for the units [u0, u0 + len) of one block.
  //   dh: [n, H] (leading dim dh_ld), dh_more: [n, H] (may be null): the gradient w.r.t.
  //       o * tanh(c) of this step is their sum
  //   ws: [n, 5H] the step's workspace rows (leading dim ws_ld)
  //   c_prev: the cell state each row started the step from
  //   dc_state: [N, H] in: dL/dc from later steps, out: dL/dc_prev
  //   dgates: [n, 4H] the step's gate-gradient rows
  //   sq: null, or [2] to which the squares of the gradients reaching h and c in this
  //       step (dh + dh_more, and dL/dc_t) are added (the gradient-norm monitor)
  void (*backward_units)(int64_t n, int64_t H, int64_t u0, int64_t len, const scalar_t* dh,
                         int64_t dh_ld, const scalar_t* dh_more, const scalar_t* ws,
                         int64_t ws_ld, const PrevRows<scalar_t>& c_prev, scalar_t* dc_state,
                         scalar_t* dgates, double* sq);
};

GATEDRNN_CPU_KERNELS(LstmKernels, lstm_kernels)

}  // namespace gatedrnn
