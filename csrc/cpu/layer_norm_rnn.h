#pragma once
// What the row-wise cells (layer_norm_lstm.cpp, layer_norm_gru.cpp) share: the LayerNorm
// of a row and its gradient, and the forward and backward time loops around a cell's
// per-row pointwise pass. They are the layer-normalized cells, and, with their LayerNorms
// left out, the plain LSTM and GRU wherever a regularizer needs the time loop (zoneout,
// variational state dropout: Regularizers below).
//
// LayerNorm normalizes a row of the recurrent GEMM's output over all its gate columns,
// so no block of hidden units can run its pointwise pass alone, as the plain cells'
// teams do. A step is the GEMM cut by column blocks over the team, a barrier, the
// pointwise pass cut by rows (a row of any batch is independent of the others), and a
// barrier. Every row and every GEMM block is computed by the same code whichever thread
// runs it, so results do not depend on the thread count.
//
// The input side needs no recurrence: LN_x(W_ih x) for every step is one GEMM and one
// pass before the loop, and its gradient one pass and two GEMMs after the backward loop.
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>
#include <vector>

#include "block_cache.h"
#include "isa/activations.h"
#include "isa/layer_norm.h"
#include "recurrence.h"

namespace gatedrnn {

// Mean and 1 / sqrt(biased variance + eps) of a[0:n] (LayerNormKernels::row_stats).
template <typename scalar_t>
std::pair<scalar_t, scalar_t> row_stats(const scalar_t* a, int64_t n) {
  scalar_t mean, rstd;
  layer_norm_kernels<scalar_t>().row_stats(n, a, &mean, &rstd);
  return {mean, rstd};
}

// A layer-normalized LSTM's workspace row (what the backward reads of a step's row), with H
// hidden units (the CPU kernels' and the portable ops' alike):
struct LayerNormLstmLayout {
  int64_t H;
  int64_t xhat_x() const { return 0; }           // [4H] LN_x's normalized W_ih x
  int64_t xhat_h() const { return 4 * H; }       // [4H] LN_h's normalized W_hh m h
  int64_t gates() const { return 8 * H; }        // [4H] s(i), s(f), tanh(g), s(o)
  int64_t cell() const { return 12 * H; }        // [H] c~, LN_c's input
  int64_t tanh_lc() const { return 13 * H; }     // [H] tanh(LN_c(c~))
  int64_t c_out() const { return 14 * H; }       // [H] c', the state the next step reads
  int64_t rstd_x() const { return 15 * H; }      // 1 / sqrt(var + eps) of W_ih x
  int64_t rstd_h() const { return 15 * H + 1; }  // ... of W_hh m h
  int64_t rstd_c() const { return 15 * H + 2; }  // ... of c~
  int64_t mean_c() const { return 15 * H + 3; }  // the mean of c~
  int64_t width() const { return 15 * H + 4; }
};

// A layer-normalized GRU's workspace row, with H hidden units:
struct LayerNormGruLayout {
  int64_t H;
  int64_t xhat_x() const { return 0; }           // [3H] LN_x's normalized W_ih x
  int64_t xhat_h() const { return 3 * H; }       // [3H] LN_h's normalized W_hh h
  int64_t gates() const { return 6 * H; }        // [3H] r, z, n
  int64_t hidden_n() const { return 9 * H; }     // [H] gh_n
  int64_t rstd_x() const { return 10 * H; }      // 1 / sqrt(var + eps) of W_ih x
  int64_t rstd_h() const { return 10 * H + 1; }  // ... of W_hh h
  int64_t width() const { return 10 * H + 2; }
};

// The regularizers a row-wise cell applies inside its time loop; null where off.
//   state: [N, P] multiplies h_{t-1} where it enters the recurrent GEMM (variational
//          state dropout, Gal & Ghahramani 2016: one mask per sequence, scaled by 1/(1-p))
//   zoneout_h, zoneout_c: [R, H] per row of each step, the weight d of the previous value
//          (Krueger et al. 2016): h_t = d h_{t-1} + (1 - d) h~_t, likewise the LSTM's c_t
//          (0/1 in training, p in evaluation)
// And the per-step resets, with the initial states h0 [N, H] and c0 the rows restart from.
template <typename scalar_t>
struct Regularizers {
  const scalar_t* state = nullptr;
  const scalar_t* zoneout_h = nullptr;
  const scalar_t* zoneout_c = nullptr;
  Resets resets;
  const scalar_t* h0 = nullptr;
  const scalar_t* c0 = nullptr;
};

// The data of an optional mask, checked against input: [rows, cols].
template <typename scalar_t>
const scalar_t* mask_data(const char* op, const at::Tensor& input,
                          const std::optional<at::Tensor>& mask, const char* name,
                          int64_t rows, int64_t cols, std::vector<at::Tensor>& keep) {
  if (!mask.has_value() || !mask->defined()) return nullptr;
  check_same_dtype(op, input, *mask, name);
  check_shape(op, *mask, name, {rows, cols}, "the mask's rows and columns");
  keep.push_back(mask->contiguous());
  return keep.back().const_data_ptr<scalar_t>();
}

// dx[0:n] = the gradient of a LayerNorm's input (LayerNormKernels::input_grad) where
// `normalized`, else of an input the gain multiplies directly (a cell without that
// LayerNorm, gain 1).
template <typename scalar_t>
void norm_input_grad(bool normalized, int64_t n, const scalar_t* dy, const scalar_t* gain,
                     const scalar_t* xhat, scalar_t rstd, scalar_t* dx) {
  if (normalized) {
    layer_norm_kernels<scalar_t>().input_grad(n, dy, gain, xhat, rstd, dx);
  } else {
    for (int64_t j = 0; j < n; ++j) dx[j] = dy[j] * gain[j];
  }
}

// In-kernel gradient clipping (Graves 2013): the gradient of each step's gate
// pre-activations clamped to [-clip, clip] before it reaches h_{t-1} and the weights; off
// where clip is 0.
template <typename scalar_t>
scalar_t clamped(scalar_t g, scalar_t clip) {
  return clip > 0 ? std::clamp(g, -clip, clip) : g;
}
template <typename scalar_t>
void clamp_gradient(int64_t n, scalar_t* g, scalar_t clip) {
  for (int64_t j = 0; j < n; ++j) g[j] = std::clamp(g[j], -clip, clip);
}

// out[k][j] = the sum over rows r = 0, 1, ... (in that order) of the k-th of the K values
// add(r, j, v) adds to v[0..K), for j < cols, in double: blocks of columns go to threads,
// so the sums do not depend on their number. One pass over the rows for all K sums.
template <int K, typename scalar_t, typename Add>
void column_sums(int64_t rows, int64_t cols, const Add& add, std::array<scalar_t*, K> out) {
  constexpr int64_t kBlock = 64;
  at::parallel_for(0, ceil_div(cols, kBlock), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t j0 = c * kBlock, j1 = std::min(cols, j0 + kBlock);
      double acc[kBlock][K] = {};
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = j0; j < j1; ++j) add(r, j, acc[j - j0]);
      }
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t j = j0; j < j1; ++j) out[k][j] = scalar_t(acc[j - j0][k]);
      }
    }
  });
}

// The input side of the forward: xhat[r, :G] = the rows of x @ w_ih^T, normalized where
// `normalize`, and rstd[r * rstd_ld] = their 1 / sqrt(var + eps) (1 where not).
//   x: [R, I], w_ih: [G, I]; xhat: [R, xhat_ld]
template <typename scalar_t>
void normalized_input_projection(const at::Tensor& x, const at::Tensor& w_ih, bool normalize,
                                 scalar_t* xhat, int64_t xhat_ld, scalar_t* rstd,
                                 int64_t rstd_ld) {
  const int64_t R = x.size(0), I = x.size(1), G = w_ih.size(0);
  const PackedWeight<scalar_t> w(w_ih);
  parallel_gemm<scalar_t>(R, G, I, GemmA<scalar_t>::rows(x.const_data_ptr<scalar_t>(), I),
                          w.b(), scalar_t(0), xhat, xhat_ld);
  at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      scalar_t* row = xhat + r * xhat_ld;
      scalar_t inv = 1;
      if (normalize) {
        const auto [mean, rstd_r] = row_stats(row, G);
        for (int64_t j = 0; j < G; ++j) row[j] = (row[j] - mean) * rstd_r;
        inv = rstd_r;
      }
      if (rstd) rstd[r * rstd_ld] = inv;
    }
  });
}

// How many blocks a step's pointwise pass over its rows is cut into: one per 2^13
// elements of the [rows, G] gate rows, at most 8 (each block costs a thread a barrier).
inline int64_t row_blocks(int64_t rows, int64_t G) {
  return std::clamp<int64_t>(rows * G / (int64_t(1) << 13), 1, 8);
}

// The forward time loop: for each step, gh[:n] = gemm_state[:n] @ w_hh^T, then
// row(k, b, r, gh + b * G, scratch) for each live row b (flat row r): the cell's
// pointwise pass, which writes the row's new state (and, masked, into gemm_state where
// that is not the state itself) and what else it keeps.
// scratch: scratch_len elements of the running thread's own.
//   w_hh: [G, P], gemm_state: [N, P] (the state, or its masked copy), gh: [N, G]
template <typename scalar_t, typename Row>
void layer_norm_forward_loop(const Schedule& s, const at::Tensor& w_hh,
                             const scalar_t* gemm_state, scalar_t* gh, int64_t scratch_len,
                             const Row& row) {
  const int64_t N = s.batch, G = w_hh.size(0), P = w_hh.size(1);
  const UnitBlocks cols = unit_blocks(G, 1, P, N, s.steps());
  const UnitBlockGemm<scalar_t> hidden(w_hh, 1, G, cols, N, s.steps());
  const int64_t threads = std::max(cols.count(), row_blocks(N, G));
  at::Tensor scratch = at::empty({threads, std::max<int64_t>(scratch_len, 1)},
                                 c10::CppTypeToScalarType<scalar_t>::value);
  run_team(threads, [&](const TeamMember& me) {
    scalar_t* mine = scratch.mutable_data_ptr<scalar_t>() + me.id() * scratch.size(1);
    const auto [c0, c1] = me.share(cols.count());
    for (int64_t k = 0; k < s.steps(); ++k) {
      const int64_t t = s.time_at(k), n = s.sizes[t], off = s.offsets[t];
      for (int64_t c = c0; c < c1; ++c) {
        // gh[:n, block] = h[:n] @ w_hh_block^T      [n, P] x [P, len]
        hidden.run(c, n, gemm_state, P, scalar_t(0), gh + cols.begin(c), G, k);
      }
      me.barrier();
      const auto [b0, b1] = me.share(n);
      for (int64_t b = b0; b < b1; ++b) row(k, b, off + b, gh + b * G, mine);
      me.barrier();
    }
  });
}

// The backward time loop, steps in reverse processing order. h_{t-1}'s gradient is kept
// in two parts: dh_state, what reached it other than through the recurrent GEMM (the
// output's gradient, zoneout's, the GRU's z h), and dh_gemm, what came through the GEMM
// (times the state mask where there is one). row(k, b, r, dh_gemm_b) for each live row b
// of step k (flat row r) reads both (dh_gemm_b: row b of dh_gemm, unmasked), writes
// dh_state[b] anew and the gradient of the row's W_hh h_{t-1} (before its LayerNorm) to
// dgh[r, :G]; then dh_gemm[:n] = dgh[rows of k] @ w_hh. At the end dh_state is grad_h0.
//   w_hh: [G, P], dh_state: [N, P] (grad_h_n in), state_mask: [N, P] or null,
//   dgh: [R, G]; grad_h0 false (GradsWanted::states): the last step's product is left out,
//   and dh_state is not grad_h0 then
template <typename scalar_t, typename Row>
void layer_norm_backward_loop(const Schedule& s, const at::Tensor& w_hh, at::Tensor& dh_state,
                              const scalar_t* state_mask, const scalar_t* dgh, const Row& row,
                              bool grad_h0) {
  const int64_t N = s.batch, G = w_hh.size(0), P = w_hh.size(1);
  // dh's P columns (a quarter of the forward GEMM's, LSTM) are too few for unit_blocks to
  // split; the k = G products are long enough for 64-column blocks to pay: LayerNormLSTM
  // (100, 16, 128, 128) backward 9.9 -> 8.0-8.6 ms (two blocks of 64 against one of 128;
  // Intel Xeon, 2 threads).
  UnitBlocks cols = unit_blocks(P, 1, G, N, s.steps());
  if (cols.count() == 1 && P >= 128 && double(N) * G * P >= double(1 << 17)) {
    cols = UnitBlocks{P, ceil_div(ceil_div(P, 2), 8) * 8};
  }
  const int64_t products = s.steps() - (grad_h0 ? 0 : 1);
  const UnitBlockGemm<scalar_t> hidden =
      products > 0 ? UnitBlockGemm<scalar_t>(w_hh.t(), 1, P, cols, N, products)
                   : UnitBlockGemm<scalar_t>();
  at::Tensor dh_gemm = at::zeros({N, P}, dh_state.options());
  scalar_t* dg = dh_gemm.mutable_data_ptr<scalar_t>();
  run_team(std::max(cols.count(), row_blocks(N, G)), [&](const TeamMember& me) {
    const auto [c0, c1] = me.share(cols.count());
    for (int64_t k = s.steps() - 1; k >= 0; --k) {
      const int64_t t = s.time_at(k), n = s.sizes[t], off = s.offsets[t];
      const auto [b0, b1] = me.share(n);
      for (int64_t b = b0; b < b1; ++b) row(k, b, off + b, dg + b * P);
      me.barrier();
      if (k == 0 && !grad_h0) break;
      for (int64_t c = c0; c < c1; ++c) {
        // dh_gemm[:n, block] = dgh[rows] @ w_hh[:, block]      [n, G] x [G, len]
        hidden.run(c, n, dgh + off * G, G, scalar_t(0), dg + cols.begin(c), P, k);
      }
      me.barrier();
    }
  });
  if (!grad_h0) return;
  if (state_mask) {
    dh_gemm.mul_(at::from_blob(const_cast<scalar_t*>(state_mask), {N, P}, dh_state.options()));
  }
  dh_state.add_(dh_gemm);
}

// The state each row started from: [R, P], row r = the same sequence's state at the
// previously processed step, or h0; times mask[b] (its sequence's) where mask is given.
//   out: [R, P], h0: [N, P], mask: [N, P] or null
template <typename scalar_t>
at::Tensor previous_states(const Schedule& s, const at::Tensor& out, const at::Tensor& h0,
                           const scalar_t* mask, const Resets& resets) {
  const int64_t P = h0.size(1);
  at::Tensor prev = cached_empty({s.rows, P}, out.options());
  scalar_t* dst = prev.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, s.steps(), 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t t = s.time_at(k);
      const PrevRows<scalar_t> p = previous_rows(s, k, out.const_data_ptr<scalar_t>(), P,
                                                 h0.const_data_ptr<scalar_t>(), P, resets);
      for (int64_t b = 0; b < s.sizes[t]; ++b) {
        scalar_t* d = dst + (s.offsets[t] + b) * P;
        std::copy(p.row(b), p.row(b) + P, d);
        if (mask) {
          for (int64_t j = 0; j < P; ++j) d[j] *= mask[b * P + j];
        }
      }
    }
  });
  return prev;
}

// Where a cell's workspace row keeps what the gradients after the loop read.
struct NormColumns {
  int64_t width;   // of a workspace row
  int64_t xhat_x;  // [G] LN_x's normalized W_ih x
  int64_t xhat_h;  // [G] LN_h's normalized W_hh h
  int64_t rstd_x;  // LN_x's 1 / sqrt(var + eps)
};

// The gradients of the input, the weights, the biases and the LN_x and LN_h gains, after
// the backward loop, from what it left per row: dx_pre and dh_pre, the gradients of
// LN_x(W_ih x) + b_ih and of LN_h(W_hh h) + b_hh (the same for the LSTM, whose two add
// before anything else), and dgh, that of W_hh h before LN_h.
//   grad_input = dgx @ w_ih, grad_w_ih = dgx^T @ x, grad_w_hh = dgh^T @ h_prev, with dgx
//   the gradient of W_ih x before LN_x, made here in dx_pre's place (dx_pre is overwritten;
//   for the LSTM, dh_pre too: the same tensor); grad_b_ih = the column sums of dx_pre,
//   grad_gain_x those of dx_pre * xhat_x (likewise the hidden side).
//   x: [R, I], w_ih: [G, I], out: [R, P], h0: [N, P], ws: [R, cols.width];
//   dx_pre, dh_pre, dgh: [R, G]; gain_x: [G] (normalized_x: whether LN_x is there);
//   state_mask: [N, P] or null (h_prev as the GEMM saw it); wanted: which to make (the
//   others undefined)
struct LayerNormRnnGrads {
  at::Tensor grad_input, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_gain_x, grad_gain_h;
};
template <typename scalar_t>
LayerNormRnnGrads layer_norm_rnn_grads(const Schedule& s, const at::Tensor& x,
                                       const at::Tensor& w_ih, const at::Tensor& out,
                                       const at::Tensor& h0, const at::Tensor& ws,
                                       const NormColumns& cols, at::Tensor& dx_pre,
                                       const at::Tensor& dh_pre, const at::Tensor& dgh,
                                       const scalar_t* gain_x, bool normalized_x,
                                       const scalar_t* state_mask, const Resets& resets,
                                       const GradsWanted& wanted) {
  const int64_t R = x.size(0), I = x.size(1), G = w_ih.size(0), P = h0.size(1);
  const auto opts = x.options();
  const scalar_t* wsp = ws.const_data_ptr<scalar_t>();
  const scalar_t* dxp = dx_pre.const_data_ptr<scalar_t>();
  const scalar_t* dhp = dh_pre.const_data_ptr<scalar_t>();
  const int64_t W = cols.width;
  LayerNormRnnGrads g;
  if (wanted.input) g.grad_input = cached_empty({R, I}, opts);
  if (!wanted.input && !wanted.weights) return g;
  if (wanted.weights) {
    g = {g.grad_input,          at::empty({G, I}, opts), at::empty({G, P}, opts),
         at::empty({G}, opts), at::empty({G}, opts),    at::empty({G}, opts),
         at::empty({G}, opts)};
  }
  // The biases' and gains' gradients: column sums over every row, blocks of columns over
  // the threads (the sums do not depend on their number). First, while dx_pre still holds
  // its own values.
  constexpr int64_t kBlock = 64;
  const LayerNormKernels<scalar_t>& ln = layer_norm_kernels<scalar_t>();
  at::parallel_for(0, wanted.weights ? ceil_div(G, kBlock) : 0, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t j0 = c * kBlock, len = std::min(G, j0 + kBlock) - j0;
      double sums[4][kBlock] = {};
      ln.column_sums(R, len, dxp + j0, G, wsp + cols.xhat_x + j0, W, sums[0], sums[2]);
      ln.column_sums(R, len, dhp + j0, G, wsp + cols.xhat_h + j0, W, sums[1], sums[3]);
      scalar_t* out[4] = {g.grad_b_ih.mutable_data_ptr<scalar_t>(),
                          g.grad_b_hh.mutable_data_ptr<scalar_t>(),
                          g.grad_gain_x.mutable_data_ptr<scalar_t>(),
                          g.grad_gain_h.mutable_data_ptr<scalar_t>()};
      for (int64_t k = 0; k < 4; ++k) {
        for (int64_t j = 0; j < len; ++j) out[k][j0 + j] = scalar_t(sums[k][j]);
      }
    }
  });
  // dgx in dx_pre's place (each row read before it is written): a buffer of [R, G] less
  // to write, ~3 MB at (T, N, H) = (100, 16, 128).
  scalar_t* gx = dx_pre.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      norm_input_grad(normalized_x, G, gx + r * G, gain_x, wsp + r * W + cols.xhat_x,
                      wsp[r * W + cols.rstd_x], gx + r * G);
    }
  });
  // As independent sums whose blocks share the threads, each B packed once for all its
  // blocks (run_gemm_sums): LayerNormLSTM (100, 64, 512, 512) backward 540 -> 415-440 ms
  // against three parallel_gemm calls (Intel Xeon, 2 threads).
  std::vector<GemmSum<scalar_t>> sums;
  if (wanted.input) {
    sums.push_back({R, I, g.grad_input.mutable_data_ptr<scalar_t>(), I, scalar_t(0),
                    {{false, G, gx, G, w_ih.const_data_ptr<scalar_t>(), I}}});
  }
  at::Tensor h_prev;
  if (wanted.weights) {
    h_prev = previous_states<scalar_t>(s, out, h0, state_mask, resets);
    sums.push_back({G, I, g.grad_w_ih.mutable_data_ptr<scalar_t>(), I, scalar_t(0),
                    {{true, R, gx, G, x.const_data_ptr<scalar_t>(), I}}});
    sums.push_back({G, P, g.grad_w_hh.mutable_data_ptr<scalar_t>(), P, scalar_t(0),
                    {{true, R, dgh.const_data_ptr<scalar_t>(), G,
                      h_prev.const_data_ptr<scalar_t>(), P}}});
  }
  run_gemm_sums<scalar_t>(sums);
  return g;
}

// check_rnn_args, and the dtypes the layer-normalized ops take: float32 and float64
// (functional.py computes float16 and bfloat16 in float32).
inline RnnShapes check_layer_norm_args(const char* op, int64_t gates, const at::Tensor& input,
                                       const std::optional<at::Tensor>& batch_sizes,
                                       const at::Tensor& h0, const at::Tensor* c0,
                                       const at::Tensor& w_ih, const at::Tensor& w_hh,
                                       const std::optional<at::Tensor>& b_ih,
                                       const std::optional<at::Tensor>& b_hh, bool reverse) {
  RnnShapes sh = check_rnn_args(op, gates, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                std::nullopt, reverse);
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": expected float32 or float64 tensors, got ", input.scalar_type());
  return sh;
}

inline bool is_given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// A LayerNorm's shift needs its gain (a shift alone would be a bias).
inline void check_shift_has_gain(const char* op, const std::optional<at::Tensor>& gain,
                                 const std::optional<at::Tensor>& shift, const char* shift_name) {
  TORCH_CHECK(is_given(gain) || !is_given(shift), op, ": ", shift_name,
              " is given without its LayerNorm's gain (weight)");
}

// A backward op's checks of the forward's results it was given and of their gradients.
inline void check_layer_norm_backward(const char* op, const RnnShapes& sh, int64_t ws_width,
                                      const at::Tensor& input, const at::Tensor& workspace,
                                      const at::Tensor& output, const at::Tensor& grad_output,
                                      const at::Tensor& h0, const at::Tensor& grad_h_n) {
  check_shape(op, workspace, "workspace", {sh.schedule.rows, ws_width},
              "rows, the forward's workspace width");
  check_same_dtype(op, input, workspace, "workspace");
  check_same_dtype(op, input, output, "output");
  std::vector<int64_t> expected = input.sizes().vec();
  expected.back() = sh.hidden_size;
  check_shape(op, output, "output", expected, "input's shape with hidden_size features");
  check_shape(op, grad_output, "grad_output", output.sizes(), "the output's shape");
  check_shape(op, grad_h_n, "grad_h_n", h0.sizes(), "h0's shape");
}

// A LayerNorm parameter of `size` elements, checked against input; undefined if absent,
// or ones where `ones_if_absent` (a gain: the cell without that LayerNorm multiplies by 1).
inline at::Tensor layer_norm_param(const char* op, const at::Tensor& input,
                                   const std::optional<at::Tensor>& p, const char* name,
                                   int64_t size, bool ones_if_absent) {
  if (!p.has_value() || !p->defined()) {
    return ones_if_absent ? at::ones({size}, input.options()) : at::Tensor();
  }
  check_same_dtype(op, input, *p, name);
  check_shape(op, *p, name, {size}, "the normalized width");
  return p->contiguous();
}

}  // namespace gatedrnn
