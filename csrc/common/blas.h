#pragma once
// Direct BLAS GEMM for the time loop: no Tensor, no allocation, no dispatcher.
// libtorch_cpu exports the Fortran BLAS symbols of the BLAS it was built with
// (MKL on x86-64 wheels, OpenBLAS on Arm), so we bind to them directly.
#include <algorithm>
#include <cstdint>
#include <limits>

#include <c10/util/Exception.h>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
            const int* k, const float* alpha, const float* a, const int* lda,
            const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n,
            const int* k, const double* alpha, const double* a, const int* lda,
            const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace gatedrnn {

inline int blas_int(int64_t v, const char* what) {
  TORCH_CHECK(v <= std::numeric_limits<int>::max(),
              "gatedrnn: ", what, " = ", v, " exceeds the 32-bit BLAS limit");
  return static_cast<int>(v);
}

inline void fortran_gemm(const char* ta, const char* tb, const int* m, const int* n,
                         const int* k, const float* alpha, const float* a, const int* lda,
                         const float* b, const int* ldb, const float* beta, float* c,
                         const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void fortran_gemm(const char* ta, const char* tb, const int* m, const int* n,
                         const int* k, const double* alpha, const double* a, const int* lda,
                         const double* b, const int* ldb, const double* beta, double* c,
                         const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Row-major C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C.
// trans_a: A is stored [k, m] (row-major, leading dim lda) and used transposed.
// Row-major C = A B is column-major C^T = B^T A^T, hence the swapped operands.
template <typename scalar_t>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha,
          const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta,
          scalar_t* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const int mi = blas_int(m, "m"), ni = blas_int(n, "n"), ki = blas_int(k, "k");
  // BLAS rejects leading dimensions below 1 even for empty operands.
  const int lda_i = blas_int(std::max<int64_t>(lda, 1), "lda");
  const int ldb_i = blas_int(std::max<int64_t>(ldb, 1), "ldb");
  const int ldc_i = blas_int(std::max<int64_t>(ldc, 1), "ldc");
  const char ta = trans_a ? 'T' : 'N';
  const char tb = trans_b ? 'T' : 'N';
  fortran_gemm(&tb, &ta, &ni, &mi, &ki, &alpha, b, &ldb_i, a, &lda_i, &beta, c, &ldc_i);
}

}  // namespace gatedrnn
