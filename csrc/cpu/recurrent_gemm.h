#pragma once
// The per-step recurrent GEMM, whose weight is the same at every step. It is cut by the
// blocks of units of a thread team (step_team.h), one weight block per team block, and
// either packed once per call into the GEMM kernel's panels (gemm.h) or, for steps of
// one or two rows, read where it is (GemmKernels::dot and the tiles on a B read in
// place): a one-step call (T = 1: seq2seq decoders, RL policies, streaming) would
// otherwise spend most of its time packing. A 2-layer GRU step with hidden size 500 at
// batch 1 took 7.6 ms packing every weight, against torch.nn's 1.6.
//
// Packings are not kept from one call to the next. A cache keyed by the weight's storage,
// data pointer and version counter made that GRU call 0.65 ms, but it cannot see writes
// through `.data`, which PyTorch does not count: torch.autograd.gradcheck perturbs inputs
// that way (and failed on stale packings), as do hand-written optimizers.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "gemm.h"
#include "small_batch_gemm.h"
#include "step_team.h"

namespace gatedrnn {

// Steps of up to this many rows read the weight in place.
constexpr int64_t kDirectRows = 2;

// The per-step recurrent GEMM cut by blocks of hidden units: block b
// computes C_b[m, gates * len] = A[m, k] @ W_b^T, where W_b is the rows
// {g * gate_stride + begin(b) + j : g < gates, j < len} of W [rows, k] (the weight rows
// of the block's units for every gate).
template <typename scalar_t>
class UnitBlockGemm {
 public:
  UnitBlockGemm() = default;
  // w: [rows, k], any strides (a transposed weight is fine). max_m: the most rows a
  // step will have. precision: that of the packed blocks' products; steps of a few rows
  // (the small-batch kernel, W read in place) run in float32 whatever it is: they stream
  // W once per step, as fast in float32, and exact for bfloat16 values.
  UnitBlockGemm(const at::Tensor& w, int64_t gates, int64_t gate_stride, UnitBlocks units,
                int64_t max_m, GemmPrecision precision = GemmPrecision::kNative)
      : units_(units), gates_(gates), gate_stride_(gate_stride), max_m_(max_m),
        k_(w.size(1)) {
    if (max_m <= kDirectRows && (w.stride(1) == 1 || w.stride(0) == 1)) {
      // In place: rows of W contiguous (dot), or W^T's rows (the tiles on B in place).
      w_ = w;
      rows_ = w.stride(1) == 1;
      return;
    }
    reverse_.assign(units.count(), 0);
    for (int64_t b = 0; b < units.count(); ++b) {
      const int64_t begin = units.begin(b), len = units.length(b);
      if (SmallBatchGemm<scalar_t>::suits(max_m, gates * len, k_)) {
        // W_b: W itself when the one block has every unit, else its rows.
        at::Tensor w_b = w;
        if (units.count() != 1 || gates * gate_stride != w.size(0)) {
          std::vector<at::Tensor> rows;
          for (int64_t g = 0; g < gates; ++g) {
            rows.push_back(w.narrow(0, g * gate_stride + begin, len));
          }
          w_b = at::cat(rows);
        }
        small_.emplace_back(w_b);
        packed_.emplace_back();
      } else {
        // W_b's row j is W's row (j / len) * gate_stride + begin + j % len.
        small_.emplace_back();
        packed_.emplace_back(w, gates * len, [&](int64_t j) {
          return (j / len) * gate_stride + begin + j % len;
        }, precision);
      }
    }
  }

  // C_b[:m] = A[:m] @ W_b^T + beta * C_b[:m]; c points at C_b's first column.
  // Single-threaded; two threads may run two different blocks at once.
  void run(int64_t b, int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
           int64_t ldc) const {
    const int64_t len = units_.length(b);
    if (m == 0 || gates_ * len == 0) return;
    TORCH_INTERNAL_ASSERT(m <= max_m_, "gatedrnn: a step of ", m, " rows, above the ", max_m_,
                          " the recurrent GEMM was made for");
    if (w_.defined()) {
      const scalar_t* w = w_.template const_data_ptr<scalar_t>();
      for (int64_t g = 0; g < gates_; ++g) {
        const int64_t row = g * gate_stride_ + units_.begin(b);
        if (rows_) {
          // C[:, g len : (g+1) len] = A @ W[row : row + len]^T
          gemm_kernels<scalar_t>().dot(m, len, k_, a, lda, w + row * w_.stride(0),
                                       w_.stride(0), beta, c + g * len, ldc);
        } else {
          // W^T [k, rows] is row-major with leading dim stride(1): its columns in place.
          tile_gemm<scalar_t>(m, len, k_, GemmA<scalar_t>::rows(a, lda),
                              GemmB<scalar_t>::rows(w + row * w_.stride(0), w_.stride(1)), beta,
                              c + g * len, ldc);
        }
      }
      return;
    }
    if (small_[b].defined()) {
      // Each run visits the panels in the order opposite to the last one's.
      small_[b].run(m, a, lda, beta, c, ldc, reverse_[b] != 0);
      reverse_[b] = !reverse_[b];
      return;
    }
    packed_[b].run(m, a, lda, beta, c, ldc);
  }

 private:
  UnitBlocks units_;
  int64_t gates_ = 0, gate_stride_ = 0, max_m_ = 0, k_ = 0;
  at::Tensor w_;       // defined: W read in place
  bool rows_ = false;  // W's rows contiguous (else W^T's)
  std::vector<PackedWeight<scalar_t>> packed_;  // W_b^T, per block, where not small_
  std::vector<SmallBatchGemm<scalar_t>> small_;
  // Per block, the next visiting order for SmallBatchGemm (a char: vector<bool> packs
  // bits, and two threads write neighbouring blocks).
  mutable std::vector<char> reverse_;
};

}  // namespace gatedrnn
