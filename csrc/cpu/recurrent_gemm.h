#pragma once
// The per-step recurrent GEMM, C[m, n] = A[m, k] @ op(B), where B (a recurrent weight)
// is the same at every step. With MKL (x86-64 torch wheels) B is packed once per
// sequence into MKL's internal panel format (cblas_sgemm_pack), so the steps do not
// repack it: that copy was ~7% of an LSTM forward at (T, N, H) = (100, 16, 128).
// B is packed per column block of C (gemm_blocks), so the blocks of a step run in
// parallel and round the same way at any thread count.
// The MKL entry points are weak symbols: where the BLAS under torch is not MKL they
// resolve to null and the plain BLAS GEMM is used.
#include <ATen/ATen.h>

#include <cstddef>
#include <vector>

#include "../common/blas.h"
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

template <typename scalar_t>
class RecurrentGemm {
 public:
  // op(B) = B^T with B stored [n, k] (trans_b), else B stored [k, n]; ldb its row stride.
  // Steps with m == packed_m use the packed copy (MKL ties a packed B to its m).
  RecurrentGemm(bool trans_b, int64_t n, int64_t k, const scalar_t* b, int64_t ldb,
                int64_t packed_m)
      : trans_b_(trans_b), n_(n), k_(k), b_(b), ldb_(ldb), packed_m_(packed_m),
        blocks_(gemm_blocks(packed_m, n, k, /*split_m=*/false)) {
    pack();
  }

  // C[:m] = A[:m] @ op(B) + beta * C[:m]
  void run(int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
           int64_t ldc) const {
    if (m == 0) return;
    if (!packed_.empty() && m == packed_m_ && k_ > 0) {
      compute_packed(m, a, lda, beta, c, ldc);
      return;
    }
    gemm<scalar_t>(false, trans_b_, m, n_, k_, scalar_t(1), a, lda, b_, ldb_, beta, c, ldc);
  }

 private:
  void pack();
  void compute_packed(int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
                      int64_t ldc) const;
  // B's columns [j0, j0 + cols): the rows of a transposed B.
  const scalar_t* b_columns(int64_t j0) const { return trans_b_ ? b_ + j0 * ldb_ : b_ + j0; }

  bool trans_b_;
  int64_t n_, k_;
  const scalar_t* b_;
  int64_t ldb_;
  int64_t packed_m_;
  GemmBlocks blocks_;                // column blocks of C, one packed B per block
  std::vector<at::Tensor> packed_;   // bytes of MKL's packed B blocks, once per sequence
};

template <typename scalar_t>
inline void RecurrentGemm<scalar_t>::pack() {}

template <typename scalar_t>
inline void RecurrentGemm<scalar_t>::compute_packed(int64_t, const scalar_t*, int64_t, scalar_t,
                                                    scalar_t*, int64_t) const {}

template <>
inline void RecurrentGemm<float>::pack() {
  if (!cblas_sgemm_pack_get_size || !cblas_sgemm_pack || !cblas_sgemm_compute) return;
  if (packed_m_ <= 0 || n_ <= 0 || k_ <= 0) return;
  const int m = blas_int(packed_m_, "m"), k = blas_int(k_, "k");
  // MKL may lay out a packed B for the threads that will use it; the blocks run
  // single-threaded, so pack them that way too.
  const SerialBlas serial;
  for (int64_t j0 = 0; j0 < n_; j0 += blocks_.nb) {
    const int cols = blas_int(std::min(blocks_.nb, n_ - j0), "n");
    const size_t bytes = cblas_sgemm_pack_get_size(kCblasBMatrix, m, cols, k);
    at::Tensor block = at::empty({static_cast<int64_t>(bytes)}, at::kByte);
    cblas_sgemm_pack(kCblasRowMajor, kCblasBMatrix, trans_b_ ? kCblasTrans : kCblasNoTrans, m,
                     cols, k, 1.0f, b_columns(j0), blas_int(ldb_, "ldb"),
                     reinterpret_cast<float*>(block.mutable_data_ptr<uint8_t>()));
    packed_.push_back(std::move(block));
  }
}

template <>
inline void RecurrentGemm<float>::compute_packed(int64_t m, const float* a, int64_t lda,
                                                 float beta, float* c, int64_t ldc) const {
  for_each_gemm_block(blocks_, [&](int64_t, int64_t, int64_t j0, int64_t cols) {
    const at::Tensor& block = packed_[j0 / blocks_.nb];
    cblas_sgemm_compute(kCblasRowMajor, kCblasNoTrans, kCblasPacked, blas_int(m, "m"),
                        blas_int(cols, "n"), blas_int(k_, "k"), a, blas_int(lda, "lda"),
                        reinterpret_cast<const float*>(block.const_data_ptr<uint8_t>()),
                        blas_int(cols, "ldb"), beta, c + j0, blas_int(ldc, "ldc"));
  });
}

}  // namespace gatedrnn

namespace gatedrnn {

// The per-step recurrent GEMM cut by blocks of hidden units, for a StepTeam: block b
// computes C_b[m, gates * len] = A[m, k] @ W_b^T, where W_b is the rows
// {g * gate_stride + begin(b) + j : g < gates, j < len} of W [rows, k] (the weight rows
// of the block's units for every gate), gathered once per sequence and, with MKL,
// packed for m == packed_m.
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
    for (int64_t b = 0; b < units.count(); ++b) {
      if (units.count() == 1 && gates * gate_stride == w.size(0)) {
        // One block of every unit: W_b is W itself.
        weights_.push_back(w.contiguous());
      } else {
        std::vector<at::Tensor> rows;
        for (int64_t g = 0; g < gates; ++g) {
          rows.push_back(w.narrow(0, g * gate_stride + units.begin(b), units.length(b)));
        }
        weights_.push_back(at::cat(rows).contiguous());
      }
      blas_int(weights_.back().size(0), "n");
      pack(b);
    }
  }

  const UnitBlocks& units() const { return units_; }

  // C_b[:m] = A[:m] @ W_b^T + beta * C_b[:m]; c points at C_b's first column.
  // Single-threaded.
  void run(int64_t b, int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
           int64_t ldc) const {
    const int64_t n = gates_ * units_.length(b);
    if (m == 0 || n == 0) return;
    if (b < static_cast<int64_t>(packed_.size()) && m == packed_m_ && k_ > 0) {
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
  std::vector<at::Tensor> packed_;   // bytes of MKL's packed W_b^T
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
  at::Tensor block = at::empty({static_cast<int64_t>(bytes)}, at::kByte);
  cblas_sgemm_pack(kCblasRowMajor, kCblasBMatrix, kCblasTrans, m, n, k, 1.0f,
                   weights_[b].const_data_ptr<float>(), k,
                   reinterpret_cast<float*>(block.mutable_data_ptr<uint8_t>()));
  packed_.push_back(std::move(block));
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
