#pragma once
// The GRU's per-step pointwise passes, built once per ISA (isa/gru.cpp); the time loops
// around them are in cpu/gru.cpp. Gate order r, z, n; workspace row (4H): activated r, z,
// n, then hn = W_hn h + b_hn (needed for dr).
#include <cstdint>

#include "../capability.h"
#include "../prev_rows.h"

namespace gatedrnn {

// Gradient buffer row (kGruGradCols * H): dr, dz, dn * r, dn. The first 3H columns are
// the gradient of the hidden-side pre-activations (W_h h + b_h), which the recurrent GEMM
// reads in place; the input side is dr, dz, dn. Sharing dr and dz keeps one [R, 4H]
// buffer instead of two [R, 3H] ones.
constexpr int64_t kGruGradCols = 4;

template <typename scalar_t>
struct GruKernels {
  // One step's rows [0, n) for the units [u0, u0 + len) of one block.
  //   xg, hg: [n, 3 * len] (leading dim ld) the block's x @ w_ih^T and h @ w_hh^T, gate g
  //           at columns g * len; b_ih, b_hh: [3H]
  //   h_cur: [n, H] the state before the step; h_out, h_next: [n, H], written at u0 + j
  //   ws: [n, 4H] the step's workspace rows, or null when no backward will read them
  void (*forward_units)(int64_t n, int64_t H, int64_t u0, int64_t len, const scalar_t* xg,
                        const scalar_t* hg, int64_t ld, const scalar_t* b_ih,
                        const scalar_t* b_hh, const scalar_t* h_cur, scalar_t* ws,
                        scalar_t* h_out, scalar_t* h_next);
  // One backward step's rows [0, n) for the units [u0, u0 + len) of one block.
  //   go: [n, H] (leading dim go_ld) the loss's gradient w.r.t. the step's output rows
  //   dh_state: [N, H] in: dL/dh from later steps; out: dh * z, the part of dL/dh_prev that
  //             bypasses w_hh (the recurrent GEMM adds the rest)
  //   ws: [n, 4H] the step's workspace rows; h_prev: the state each row started from
  //   dgates: [n, kGruGradCols * H] the step's gradient buffer rows
  //   sq: null, or [1] to which the squares of the gradient reaching h in this step
  //       (go + dh_state) are added (the gradient-norm monitor)
  void (*backward_units)(int64_t n, int64_t H, int64_t u0, int64_t len, const scalar_t* go,
                         int64_t go_ld, scalar_t* dh_state, const scalar_t* ws,
                         const PrevRows<scalar_t>& h_prev, scalar_t* dgates, double* sq);
  // The same with the workspace kept in bfloat16 (bits; the bfloat16 op's, whose loop runs
  // in float32): the activations rounded as they are written, widened as they are read.
  void (*forward_units_bf16)(int64_t n, int64_t H, int64_t u0, int64_t len,
                             const scalar_t* xg, const scalar_t* hg, int64_t ld,
                             const scalar_t* b_ih, const scalar_t* b_hh, const scalar_t* h_cur,
                             uint16_t* ws, scalar_t* h_out, scalar_t* h_next);
  void (*backward_units_bf16)(int64_t n, int64_t H, int64_t u0, int64_t len,
                              const scalar_t* go, int64_t go_ld, scalar_t* dh_state,
                              const uint16_t* ws, const PrevRows<scalar_t>& h_prev,
                              scalar_t* dgates, double* sq);
};

GATEDRNN_CPU_KERNELS(GruKernels, gru_kernels)

}  // namespace gatedrnn
