#pragma once
// The row LayerNorm's statistics, input gradient and column sums, and the layer-normalized
// LSTM's row passes, built once per ISA (isa/layer_norm.cpp): the row-wise cells
// (cpu/layer_norm_*.cpp, plain C++) call them for every row of every step. Their sums run
// in double in 8 interleaved partial sums (a fixed order, whatever the thread). Compiled
// in those files for the baseline ISA, where the compiler left most of them scalar, these
// passes were ~30% of a LayerNormLSTM training step at (100, 16, 128, 128) (perf, Intel
// Xeon, one thread; the step went from 11.5 to 8.7-9.2 ms on two threads).
#include <cstdint>

#include "../capability.h"

namespace gatedrnn {

// torch.nn.LayerNorm's default.
constexpr double kLayerNormEps = 1e-5;

template <typename scalar_t>
struct LayerNormKernels {
  // *mean and *rstd = the mean and 1 / sqrt(biased variance + eps) of a[0:n], computed in
  // double.
  void (*row_stats)(int64_t n, const scalar_t* a, scalar_t* mean, scalar_t* rstd);
  // dx[0:n] = the gradient of LayerNorm's input from dy, that of its normalized output
  // xhat times gain: rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gain (the
  // means in double). dx may be xhat.
  void (*input_grad)(int64_t n, const scalar_t* dy, const scalar_t* gain, const scalar_t* xhat,
                     scalar_t rstd, scalar_t* dx);
  // The layer-normalized LSTM's gate row: xhat_h[j] = (a[j] - mean) * rstd (LN_h's
  // normalized input) and gate[j] = gain_x[j] * xhat_x[j] + gain_h[j] * xhat_h[j] +
  // shift[j], for j < n.
  void (*lstm_gates)(int64_t n, const scalar_t* a, scalar_t mean, scalar_t rstd,
                     const scalar_t* gain_x, const scalar_t* xhat_x, const scalar_t* gain_h,
                     const scalar_t* shift, scalar_t* xhat_h, scalar_t* gate);
  // The layer-normalized LSTM forward's row of n units after its gates' activations
  // (gate: s(i), s(f), tanh(g), s(o) at 0, n, 2n, 3n): cell = s(f) c + s(i) tanh(g), c_out =
  // zc ? zc c + (1 - zc) cell : cell, and c = c_out (the state).
  void (*lstm_cell_forward)(int64_t n, const scalar_t* gate, const scalar_t* zc, scalar_t* c,
                            scalar_t* cell, scalar_t* c_out);
  // Then tl = tanh(gain_c (cell - mean) rstd + shift_c) (shift_c may be null), h~ = s(o) tl,
  // h = zh ? zh h + (1 - zh) h~ : h~ (the state), out = h.
  void (*lstm_hidden_forward)(int64_t n, const scalar_t* cell, scalar_t mean, scalar_t rstd,
                              const scalar_t* gain_c, const scalar_t* shift_c,
                              const scalar_t* gate, const scalar_t* zh, scalar_t* tl,
                              scalar_t* h, scalar_t* out);
  // The layer-normalized LSTM backward's row of n units, output side: d = go + (restarted
  // ? 0 : dh + m dh_g) (the state mask m, 1 where null), *sq += d^2 (in double, j
  // ascending; sq may be null), then with dnew = zh ? (1 - zh) d : d: dh = zh ? zh d : 0,
  // dl = dnew o (1 - tl^2) and dp[3n + j] = dnew tl o (1 - o), o = gate[3n + j].
  void (*lstm_output_grads)(int64_t n, const scalar_t* go, scalar_t* dh, const scalar_t* m,
                            const scalar_t* dh_g, bool restarted, const scalar_t* zh,
                            const scalar_t* gate, const scalar_t* tl, double* sq, scalar_t* dl,
                            scalar_t* dp);
  // Its cell side, with dp[0:n] holding LN_c's input gradient: d = dp[j] + (zc ? (1 - zc)
  // dc : dc), *sq += d^2 (as above), then the gates' pre-activation gradients dp[j] (i),
  // dp[n + j] (f), dp[2n + j] (g) from gate's i, f, g and c_prev, and dc = d f + (zc ? zc dc
  // : 0), the gradient c_{t-1} gets.
  void (*lstm_cell_grads)(int64_t n, const scalar_t* gate, const scalar_t* c_prev,
                          const scalar_t* zc, double* sq, scalar_t* dc, scalar_t* dp);
  // For j < cols: sum_a[j] += the sum over r = 0, 1, ..., rows - 1 (in that order) of
  // a[r * lda + j], and sum_aw[j] += that of a[r * lda + j] * w[r * ldw + j], in double (a
  // bias's and a gain's gradient over every row of a sequence).
  void (*column_sums)(int64_t rows, int64_t cols, const scalar_t* a, int64_t lda,
                      const scalar_t* w, int64_t ldw, double* sum_a, double* sum_aw);
};

GATEDRNN_CPU_KERNELS(LayerNormKernels, layer_norm_kernels)

}  // namespace gatedrnn
