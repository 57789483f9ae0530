#pragma once
// The per-step recurrent GEMM, whose weight is the same at every step. With MKL (x86-64
// torch wheels) it is packed once per sequence into MKL's internal panel format
// (cblas_sgemm_pack), so the steps do not repack it: that copy was ~7% of an LSTM
// forward at (T, N, H) = (100, 16, 128). It is cut by the blocks of units of a thread
// team (step_team.h), one packed weight per block.
// The MKL entry points are weak symbols: where the BLAS under torch is not MKL they
// resolve to null and the plain BLAS GEMM is used.
#include <ATen/ATen.h>

#include <cstddef>
#include <vector>

#include "../common/blas.h"
#include "block_cache.h"
#include "small_batch_gemm.h"
#include "step_team.h"

extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k,
                         const float* a, int lda, const float* b, int ldb, float beta,
                         float* c, int ldc) __attribute__((weak));
}

namespace gatedrnn {

// MKL's CBLAS enum values.
constexpr int kCblasRowMajor = 101, kCblasNoTrans = 111, kCblasTrans = 112;
constexpr int kCblasBMatrix = 162, kCblasPacked = 151;

// The per-step recurrent GEMM cut by blocks of hidden units: block b
// computes C_b[m, gates * len] = A[m, k] @ W_b^T, where W_b is the rows
// {g * gate_stride + begin(b) + j : g < gates, j < len} of W [rows, k] (the weight rows
// of the block's units for every gate), gathered once per sequence and, with MKL,
// packed for m == packed_m. Batches of a few rows with a small W_b run on
// SmallBatchGemm instead (small_batch_gemm.h), for every m.
template <typename scalar_t>
class UnitBlockGemm {
 public:
  UnitBlockGemm() = default;
  // w: [rows, k], any strides (a transposed weight is fine).
  UnitBlockGemm(const at::Tensor& w, int64_t gates, int64_t gate_stride, UnitBlocks units,
                int64_t packed_m)
      : units_(units), gates_(gates), k_(w.size(1)), packed_m_(packed_m) {
    blas_int(k_, "k");
    blas_int(packed_m_, "m");
    packed_.resize(units.count());
    for (int64_t b = 0; b < units.count(); ++b) {
      // W_b: W itself when the one block has every unit, else its rows gathered.
      at::Tensor w_b = w;
      if (units.count() != 1 || gates * gate_stride != w.size(0)) {
        std::vector<at::Tensor> rows;
        for (int64_t g = 0; g < gates; ++g) {
          rows.push_back(w.narrow(0, g * gate_stride + units.begin(b), units.length(b)));
        }
        w_b = cached_empty({gates * units.length(b), k_}, w.options());
        at::cat_out(w_b, rows);
      }
      if (SmallBatchGemm<scalar_t>::suits(packed_m_, w_b.size(0), k_)) {
        // Every m <= packed_m runs on panels made from W_b (any strides).
        small_.emplace_back(w_b);
        weights_.emplace_back();
        continue;
      }
      weights_.push_back(cached_contiguous(w_b));
      blas_int(weights_.back().size(0), "n");
      small_.emplace_back();
      pack(b);
    }
  }

  // C_b[:m] = A[:m] @ W_b^T + beta * C_b[:m]; c points at C_b's first column.
  // Single-threaded.
  void run(int64_t b, int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
           int64_t ldc) const {
    const int64_t n = gates_ * units_.length(b);
    if (m == 0 || n == 0) return;
    if (small_[b].defined()) {
      TORCH_INTERNAL_ASSERT(m <= packed_m_, "gatedrnn: a step of ", m, " rows, above the ",
                            packed_m_, " the recurrent GEMM was made for");
      small_[b].run(m, a, lda, beta, c, ldc);
      return;
    }
    if (packed_[b].defined() && m == packed_m_) {
      compute_packed(b, m, a, lda, beta, c, ldc);
      return;
    }
    blas_gemm<scalar_t>(false, true, m, n, k_, scalar_t(1), a, lda,
                        weights_[b].template const_data_ptr<scalar_t>(), k_, beta, c, ldc);
  }

 private:
  void pack(int64_t) {}
  void compute_packed(int64_t, int64_t, const scalar_t*, int64_t, scalar_t, scalar_t*,
                      int64_t) const {}

  UnitBlocks units_;
  int64_t gates_ = 0, k_ = 0, packed_m_ = 0;
  std::vector<at::Tensor> weights_;  // W_b: [gates * len, k]
  std::vector<at::Tensor> packed_;   // bytes of MKL's packed W_b^T (undefined: not packed)
  // Per block: defined where W_b runs on SmallBatchGemm (then weights_[b] and
  // packed_[b] are not). Mutable: each run flips its panel order.
  mutable std::vector<SmallBatchGemm<scalar_t>> small_;
};

template <>
inline void UnitBlockGemm<float>::pack(int64_t b) {
  if (!cblas_sgemm_pack_get_size || !cblas_sgemm_pack || !cblas_sgemm_compute) return;
  if (packed_m_ <= 0 || k_ <= 0) return;
  const int m = static_cast<int>(packed_m_), k = static_cast<int>(k_);
  const int n = static_cast<int>(weights_[b].size(0));
  if (n == 0) return;
  // MKL may lay out a packed matrix for the threads that will use it; every block runs
  // single-threaded, so pack it that way too.
  const SerialBlas serial;
  const size_t bytes = cblas_sgemm_pack_get_size(kCblasBMatrix, m, n, k);
  at::Tensor block = cached_empty({static_cast<int64_t>(bytes)}, at::kByte);
  cblas_sgemm_pack(kCblasRowMajor, kCblasBMatrix, kCblasTrans, m, n, k, 1.0f,
                   weights_[b].const_data_ptr<float>(), k,
                   reinterpret_cast<float*>(block.mutable_data_ptr<uint8_t>()));
  packed_[b] = std::move(block);
}

template <>
inline void UnitBlockGemm<float>::compute_packed(int64_t b, int64_t m, const float* a,
                                                 int64_t lda, float beta, float* c,
                                                 int64_t ldc) const {
  const int n = static_cast<int>(weights_[b].size(0));
  cblas_sgemm_compute(kCblasRowMajor, kCblasNoTrans, kCblasPacked, static_cast<int>(m), n,
                      static_cast<int>(k_), a, static_cast<int>(lda),
                      reinterpret_cast<const float*>(packed_[b].const_data_ptr<uint8_t>()), n,
                      beta, c, static_cast<int>(ldc));
}

}  // namespace gatedrnn
