#pragma once
// The per-step recurrent GEMM for batches of a few rows, C[m, n] = A[m, k] @ W^T, with
// W small enough to live in the core's caches (N = 1 at (T, N, I, H) = (200, 1, 64, 64)).
//
// There MKL's packed GEMM runs as a GEMV and took ~0.8 us per step for a 64 KiB LSTM
// weight (n = 256, k = 64) and ~0.9 us for its transpose in the backward, about twice what
// streaming the weight from L2 costs; it also packs each weight into an 8 MB buffer per
// call. This kernel reads W^T in panels of `width` columns, each panel's k rows
// contiguous (so the hardware prefetcher streams it), keeps every output of a panel in
// registers across the whole k sum, and visits the panels (and the halves of a large
// panel) in alternating order from one call to the next: what it read last is still in
// L1 when the next step starts.
//
// Every output is the same sum in the same order whatever m, the row grouping or the
// visiting order (one chain of fused multiply-adds over k, or one over each half of k
// and then their sum), so results do not depend on the batch a row is in or on the
// thread count.
#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

#include "block_cache.h"

namespace gatedrnn {

template <typename scalar_t>
class SmallBatchGemm {
  using V = at::vec::Vectorized<scalar_t>;
  static constexpr int64_t kVecs = 4;  // vectors per panel row
#ifdef CPU_CAPABILITY_AVX512
  static constexpr int64_t kMaxRows = 4;  // 16 accumulators + 4 loads of 32 registers
#else
  static constexpr int64_t kMaxRows = 2;  // of 16
#endif

 public:
  static constexpr int64_t kWidth = kVecs * V::size();
  // Batches up to this many rows, weights up to this many bytes, run here. Above, MKL's
  // packed GEMM is as fast or faster (measured: m = 1 with a 256 KiB weight, 1.9 us for
  // MKL against 3.0 us here; m = 8 with 64 KiB, 1.8 against 1.3-2.1 us).
  static constexpr int64_t kMaxBatch = 4;
  static constexpr int64_t kMaxWeightBytes = int64_t(128) << 10;
  // Panels above this are summed in two halves of k (rows()), so that one half, which
  // the next call reads first, is still in the 48 KiB L1.
  static constexpr int64_t kSegmentBytes = int64_t(32) << 10;

  static bool suits(int64_t m, int64_t n, int64_t k) {
    return m >= 1 && m <= kMaxBatch && n > 0 && k > 0 &&
           n * k * int64_t(sizeof(scalar_t)) <= kMaxWeightBytes;
  }

  SmallBatchGemm() = default;
  // w: [n, k], any strides.
  explicit SmallBatchGemm(const at::Tensor& w) : n_(w.size(0)), k_(w.size(1)) {
    const int64_t panels = (n_ + kWidth - 1) / kWidth;
    // panels_[p, kk, j] = w[p * width + j, kk], zeros past n: the panels of w^T [k, n].
    // For the backward's transposed weight with n = width, that is the weight itself,
    // used without a copy.
    at::Tensor wt = w.t();
    if (panels * kWidth != n_) {
      at::Tensor wide = at::zeros({k_, panels * kWidth}, w.options());
      wide.narrow(1, 0, n_).copy_(wt);
      wt = wide;
    }
    panels_ = cached_contiguous(wt.reshape({k_, panels, kWidth}).permute({1, 0, 2}));
  }

  bool defined() const { return panels_.defined(); }

  // C[:m] = A[:m] @ W^T + beta * C[:m], m <= kMaxBatch. With beta == 0, C is not read.
  // Each call reverses the order of the previous one (panels, and halves of a panel).
  void run(int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
           int64_t ldc) {
    const int64_t panels = panels_.size(0);
    const scalar_t* base = panels_.template const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < panels; ++i) {
      const int64_t p = reverse_ ? panels - 1 - i : i;
      const scalar_t* panel = base + p * k_ * kWidth;
      const int64_t cols = std::min(kWidth, n_ - p * kWidth);
      scalar_t* cp = c + p * kWidth;
      int64_t r = 0;
      for (; r + kMaxRows <= m; r += kMaxRows) {
        rows<kMaxRows>(panel, a + r * lda, lda, beta, cp + r * ldc, ldc, cols);
      }
      if (kMaxRows > 2 && r + 2 <= m) {
        rows<2>(panel, a + r * lda, lda, beta, cp + r * ldc, ldc, cols);
        r += 2;
      }
      if (r < m) rows<1>(panel, a + r * lda, lda, beta, cp + r * ldc, ldc, cols);
    }
    reverse_ = !reverse_;
  }

 private:
  // R rows of A against one panel; cols of its columns are stored. A panel of more than
  // kSegmentBytes is summed in two halves of k, each in its own registers, added at the
  // end; the halves swap order with the panels. Addition commutes exactly, so the sum
  // has the same bits in either order.
  template <int64_t R>
  void rows(const scalar_t* panel, const scalar_t* a, int64_t lda, scalar_t beta,
            scalar_t* c, int64_t ldc, int64_t cols) const {
    V acc[R][kVecs];
    const int64_t half = k_ * kWidth * int64_t(sizeof(scalar_t)) > kSegmentBytes ? k_ / 2 : k_;
    if (half == k_) {
      sum<R>(panel, a, lda, 0, k_, acc);
    } else {
      V first[R][kVecs];
      const bool low_first = !reverse_;
      sum<R>(panel, a, lda, low_first ? 0 : half, low_first ? half : k_, first);
      sum<R>(panel, a, lda, low_first ? half : 0, low_first ? k_ : half, acc);
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

  // acc[r][:] = sum over kk in [k0, k1) of a[r, kk] * panel[kk, :], one fused
  // multiply-add chain per output in kk order.
  template <int64_t R>
  void sum(const scalar_t* panel, const scalar_t* a, int64_t lda, int64_t k0, int64_t k1,
           V (&acc)[R][kVecs]) const {
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t j = 0; j < kVecs; ++j) acc[r][j] = V(scalar_t(0));
    }
    for (int64_t kk = k0; kk < k1; ++kk) {
      V w[kVecs];
      for (int64_t j = 0; j < kVecs; ++j) w[j] = V::loadu(panel + kk * kWidth + j * V::size());
      for (int64_t r = 0; r < R; ++r) {
        const V av(a[r * lda + kk]);
        for (int64_t j = 0; j < kVecs; ++j) acc[r][j] = at::vec::fmadd(av, w[j], acc[r][j]);
      }
    }
  }

  int64_t n_ = 0, k_ = 0;
  at::Tensor panels_;  // [panels, k, width]
  bool reverse_ = false;
};

}  // namespace gatedrnn
