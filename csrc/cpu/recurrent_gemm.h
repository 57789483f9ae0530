#pragma once
// The per-step recurrent GEMM, C[m, n] = A[m, k] @ op(B), where B (a recurrent weight)
// is the same at every step. With MKL (x86-64 torch wheels) B is packed once per
// sequence into MKL's internal panel format (cblas_sgemm_pack), so the steps do not
// repack it: that copy was ~7% of an LSTM forward at (T, N, H) = (100, 16, 128).
// The MKL entry points are weak symbols: where the BLAS under torch is not MKL they
// resolve to null and the plain BLAS GEMM is used.
#include <ATen/ATen.h>

#include <cstddef>

#include "../common/blas.h"

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
      : trans_b_(trans_b), n_(n), k_(k), b_(b), ldb_(ldb), packed_m_(packed_m) {
    pack();
  }

  // C[:m] = A[:m] @ op(B) + beta * C[:m]
  void run(int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
           int64_t ldc) const {
    if (m == 0) return;
    if (packed_.defined() && m == packed_m_ && k_ > 0) {
      compute_packed(m, a, lda, beta, c, ldc);
      return;
    }
    gemm<scalar_t>(false, trans_b_, m, n_, k_, scalar_t(1), a, lda, b_, ldb_, beta, c, ldc);
  }

 private:
  void pack();
  void compute_packed(int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
                      int64_t ldc) const;

  bool trans_b_;
  int64_t n_, k_;
  const scalar_t* b_;
  int64_t ldb_;
  int64_t packed_m_;
  at::Tensor packed_;  // bytes of MKL's packed B, allocated once per sequence
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
  const int m = blas_int(packed_m_, "m"), n = blas_int(n_, "n"), k = blas_int(k_, "k");
  const size_t bytes = cblas_sgemm_pack_get_size(kCblasBMatrix, m, n, k);
  packed_ = at::empty({static_cast<int64_t>(bytes)}, at::kByte);
  cblas_sgemm_pack(kCblasRowMajor, kCblasBMatrix, trans_b_ ? kCblasTrans : kCblasNoTrans, m, n,
                   k, 1.0f, b_, blas_int(ldb_, "ldb"),
                   reinterpret_cast<float*>(packed_.mutable_data_ptr<uint8_t>()));
}

template <>
inline void RecurrentGemm<float>::compute_packed(int64_t m, const float* a, int64_t lda,
                                                 float beta, float* c, int64_t ldc) const {
  cblas_sgemm_compute(kCblasRowMajor, kCblasNoTrans, kCblasPacked, blas_int(m, "m"),
                      blas_int(n_, "n"), blas_int(k_, "k"), a, blas_int(lda, "lda"),
                      reinterpret_cast<const float*>(packed_.const_data_ptr<uint8_t>()),
                      blas_int(n_, "ldb"), beta, c, blas_int(ldc, "ldc"));
}

}  // namespace gatedrnn
