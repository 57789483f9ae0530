#pragma once
// The LSTM's per-step pointwise passes, built once per ISA (isa/lstm.cpp); the time loops
// around them are in cpu/lstm.cpp. Gate order i, f, g, o; workspace row: the activated
// gates i, f, g, o, then the cell state c (lstm_gate_columns).
#include <c10/util/Half.h>

#include <cstdint>

#include "../capability.h"
#include "../prev_rows.h"

namespace gatedrnn {

// The columns (of scalar_t) a workspace row's four activated gates take, kept as gate_t;
// the cell state c, in scalar_t, takes the next H. A bfloat16 op's loop runs in float and
// keeps its gates as float16 (`_half` kernels: [rows, 3H] float32, the 4H halves in the
// first 2H columns), other ops in scalar_t ([rows, 5H]). Why float16: the LSTM's error
// against float64 bounds what a kept gate may lose. Rounding the gates and c to bfloat16
// took test_reduced_precision.py's largest gradient error to 2.87x torch.nn's (issue 17's
// bound: 2x; cpu/recurrence.h); float16 rounds 8x finer, and the gates lie in [-1, 1],
// where it cannot overflow (below 2^-14 it keeps absolute error under 2^-25). c stays
// float32: it is not bounded, and float16 would overflow where bfloat16 would not.
template <typename scalar_t, typename gate_t>
constexpr int64_t lstm_gate_columns(int64_t H) {
  return 4 * H * static_cast<int64_t>(sizeof(gate_t)) / static_cast<int64_t>(sizeof(scalar_t));
}

template <typename scalar_t>
struct LstmKernels {
  // One step's rows [0, n) for the units [u0, u0 + len) of one block.
  //   pre: [n, 4 * len] (leading dim pre_ld) the block's x @ w_ih^T + h @ w_hh^T, gate g
  //        at columns g * len; bias: [4H] b_ih + b_hh
  //   c_state: [N, H]; ws: the step's workspace rows, [n, 5H] (leading dim ws_ld), or
  //   null when no backward will read them; h_out, h_next: [n, *] (h_next may be null),
  //   written at u0 + j
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
  // The same with the gates kept as float16 (ws: [n, 3H], lstm_gate_columns).
  decltype(forward_units) forward_units_half;
  decltype(backward_units) backward_units_half;
};

GATEDRNN_CPU_KERNELS(LstmKernels, lstm_kernels)

}  // namespace gatedrnn
