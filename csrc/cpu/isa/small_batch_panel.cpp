// The small-batch GEMM's kernel for one ISA: setup.py compiles this file once per ISA. It
// keeps the outputs of R rows of A against a whole panel in registers across the k sum:
// 4 vectors per row, R rows at a time. sum and rows are forced inline: out of line (as
// GCC 12 left sum), the accumulators, passed by reference, may alias the float inputs and
// go through memory at every step of k: the LSTM forward at (T, N, I, H) = (200, 1, 64, 64)
// took 442-458 us instead of 424-432 (minimum of 8,000 calls, AVX2, AMD EPYC).
#include "small_batch_panel.h"

#include <c10/macros/Macros.h>

#include "vec_math.h"

namespace gatedrnn {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kVecs = 4;  // vectors per panel row
#ifdef CPU_CAPABILITY_AVX512
constexpr int64_t kMaxRows = 4;  // 16 accumulators + 4 loads of 32 registers
#else
constexpr int64_t kMaxRows = 2;  // of 16
#endif

// acc[r][:] = sum over kk in [k0, k1) of a[r, kk] * panel[kk, :], one fused
// multiply-add chain per output in kk order.
template <typename scalar_t, int64_t R>
C10_ALWAYS_INLINE void sum(const scalar_t* panel, const scalar_t* a, int64_t lda, int64_t k0, int64_t k1,
         Vec<scalar_t> (&acc)[R][kVecs]) {
  using V = Vec<scalar_t>;
  constexpr int64_t width = kVecs * V::size();
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t j = 0; j < kVecs; ++j) acc[r][j] = V(scalar_t(0));
  }
  for (int64_t kk = k0; kk < k1; ++kk) {
    V w[kVecs];
    for (int64_t j = 0; j < kVecs; ++j) w[j] = V::loadu(panel + kk * width + j * V::size());
    for (int64_t r = 0; r < R; ++r) {
      const V av(a[r * lda + kk]);
      for (int64_t j = 0; j < kVecs; ++j) acc[r][j] = at::vec::fmadd(av, w[j], acc[r][j]);
    }
  }
}

// R rows of A against one panel; cols of its columns are stored. With half < k the sum
// is made in two halves of k, each in its own registers, added at the end. Addition
// commutes exactly, so the sum has the same bits in either order.
template <typename scalar_t, int64_t R>
C10_ALWAYS_INLINE void rows(const scalar_t* panel, int64_t k, int64_t half, bool low_first, const scalar_t* a,
          int64_t lda, scalar_t beta, scalar_t* c, int64_t ldc, int64_t cols) {
  using V = Vec<scalar_t>;
  V acc[R][kVecs];
  if (half >= k) {
    sum<scalar_t, R>(panel, a, lda, 0, k, acc);
  } else {
    V first[R][kVecs];
    sum<scalar_t, R>(panel, a, lda, low_first ? 0 : half, low_first ? half : k, first);
    sum<scalar_t, R>(panel, a, lda, low_first ? half : 0, low_first ? k : half, acc);
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t j = 0; j < kVecs; ++j) acc[r][j] = first[r][j] + acc[r][j];
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t j = 0; j < kVecs; ++j) {
      const int64_t c0 = j * V::size();
      if (c0 >= cols) break;
      const int64_t count = std::min<int64_t>(V::size(), cols - c0);
      scalar_t* out = c + r * ldc + c0;
      V value = acc[r][j];
      if (beta != scalar_t(0)) value = at::vec::fmadd(V(beta), V::loadu(out, count), value);
      value.store(out, count);
    }
  }
}

template <typename scalar_t>
void gemm(const scalar_t* panels, int64_t n, int64_t k, int64_t half, bool reverse, int64_t m,
          const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c, int64_t ldc) {
  constexpr int64_t width = kVecs * Vec<scalar_t>::size();
  const int64_t count = (n + width - 1) / width;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t p = reverse ? count - 1 - i : i;
    const scalar_t* w = panels + p * k * width;
    scalar_t* cp = c + p * width;
    const int64_t cols = std::min(width, n - p * width);
    int64_t r = 0;
    for (; r + kMaxRows <= m; r += kMaxRows) {
      rows<scalar_t, kMaxRows>(w, k, half, !reverse, a + r * lda, lda, beta, cp + r * ldc, ldc,
                               cols);
    }
    if (kMaxRows > 2 && r + 2 <= m) {
      rows<scalar_t, 2>(w, k, half, !reverse, a + r * lda, lda, beta, cp + r * ldc, ldc, cols);
      r += 2;
    }
    if (r < m) {
      rows<scalar_t, 1>(w, k, half, !reverse, a + r * lda, lda, beta, cp + r * ldc, ldc, cols);
    }
  }
}

}  // namespace

GATEDRNN_CPU_KERNEL_TABLE(SmallBatchKernels, small_batch_kernels, kVecs * Vec<scalar_t>::size(),
                          &gemm<scalar_t>)

}  // namespace CPU_CAPABILITY
}  // namespace gatedrnn
