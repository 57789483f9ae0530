#pragma once
// Direct BLAS GEMM: no allocation and no dispatcher call, so it can sit in the time
// loop; and cut into fixed blocks so results do not depend on the thread count.
// libtorch_cpu exports the Fortran BLAS symbols of the BLAS it was built with
// (MKL on x86-64 wheels, OpenBLAS on Arm), so we bind to them directly.
#include <algorithm>
#include <cstdint>
#include <limits>

#include <ATen/Parallel.h>
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

// While alive, BLAS calls made on this thread run on this thread only. With MKL
// (x86-64 torch wheels) a multi-threaded GEMM may split the k sum across threads, and
// the split, hence the rounding, changes with the thread count.
extern "C" int MKL_Set_Num_Threads_Local(int nthreads) __attribute__((weak));

class SerialBlas {
 public:
  SerialBlas() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SerialBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
  }
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;

 private:
  int previous_;
};

// One BLAS call, row-major: C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C.
// trans_a: A is stored [k, m] (row-major, leading dim lda) and used transposed.
// Row-major C = A B is column-major C^T = B^T A^T, hence the swapped operands.
template <typename scalar_t>
void blas_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha,
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

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How a GEMM's C is cut into blocks: a function of the shape alone, never of the
// thread count. Each block is one single-threaded BLAS call over the whole k, so
// every element of C is summed in the same order whatever the number of threads.
struct GemmBlocks {
  int64_t m = 0, n = 0;    // C is [m, n]
  int64_t mb = 0, nb = 0;  // block height and width
  int64_t rows() const { return mb > 0 ? ceil_div(m, mb) : 0; }
  int64_t cols() const { return nb > 0 ? ceil_div(n, nb) : 0; }
  int64_t count() const { return rows() * cols(); }
  // Block `id` (row-major over the grid of blocks): C[i0 : i0+mi, j0 : j0+ni].
  struct Block {
    int64_t i0, mi, j0, ni;
  };
  Block block(int64_t id) const {
    const int64_t i0 = (id / cols()) * mb, j0 = (id % cols()) * nb;
    return {i0, std::min(mb, m - i0), j0, std::min(nb, n - j0)};
  }
};

// Blocks of at least ~2^21 multiply-adds (about 30 us on one core), at most 8 of them:
// on the 2-core benchmark machine fewer, larger blocks beat 64 small ones (each block
// repacks its panels, and each parallel region costs a fork/join); 8 keeps up to 8
// threads busy. Halving stops at 128 rows and 256 columns: MKL's single-threaded
// kernels lose a third of their speed on narrower blocks (measured at m = 64, k = 512:
// 80 GFLOP/s at 128 columns, 110 at 256 and more).
inline GemmBlocks gemm_blocks(int64_t m, int64_t n, int64_t k) {
  constexpr int64_t kBlockWork = int64_t(1) << 21, kMaxBlocks = 8;
  constexpr int64_t kMinRows = 128, kMinCols = 256;
  GemmBlocks g{m, n, m, n};
  const int64_t wanted =
      std::min(kMaxBlocks, std::max<int64_t>(1, m * n * std::max<int64_t>(k, 1) / kBlockWork));
  while (g.count() < wanted) {
    const bool can_n = g.nb >= 2 * kMinCols, can_m = g.mb >= 2 * kMinRows;
    if (can_n && (g.nb >= 2 * g.mb || !can_m)) {
      g.nb = ceil_div(ceil_div(g.nb, 2), 16) * 16;
    } else if (can_m) {
      g.mb = ceil_div(ceil_div(g.mb, 2), 16) * 16;
    } else {
      break;
    }
  }
  return g;
}

// Calls block(i0, rows, j0, cols) for every block of C, spread over threads; each call
// runs with single-threaded BLAS.
template <typename F>
void for_each_gemm_block(const GemmBlocks& g, const F& block) {
  const int64_t count = g.count();
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    const SerialBlas serial;
    for (int64_t id = begin; id < end; ++id) {
      const GemmBlocks::Block b = g.block(id);
      block(b.i0, b.mi, b.j0, b.ni);
    }
  });
}

// Row-major C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C, operands as in
// blas_gemm. Bitwise identical results for any number of threads (see GemmBlocks).
template <typename scalar_t>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha,
          const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta,
          scalar_t* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  for_each_gemm_block(gemm_blocks(m, n, k), [&](int64_t i0, int64_t mi, int64_t j0, int64_t ni) {
    const scalar_t* ab = trans_a ? a + i0 : a + i0 * lda;
    const scalar_t* bb = trans_b ? b + j0 * ldb : b + j0;
    blas_gemm<scalar_t>(trans_a, trans_b, mi, ni, k, alpha, ab, lda, bb, ldb, beta,
                        c + i0 * ldc + j0, ldc);
  });
}

}  // namespace gatedrnn
