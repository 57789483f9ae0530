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
//
// The kernel is built once per ISA (isa/small_batch_panel.h); this class lays out the
// panels for the ISA in use and keeps the visiting order.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "block_cache.h"
#include "isa/small_batch_panel.h"

namespace gatedrnn {

template <typename scalar_t>
class SmallBatchGemm {
 public:
  // Batches up to this many rows, weights up to this many bytes, run here. Above, MKL's
  // packed GEMM is as fast or faster (measured: m = 1 with a 256 KiB weight, 1.9 us for
  // MKL against 3.0 us here; m = 8 with 64 KiB, 1.8 against 1.3-2.1 us).
  static constexpr int64_t kMaxBatch = 4;
  static constexpr int64_t kMaxWeightBytes = int64_t(128) << 10;
  // Panels above this are summed in two halves of k, so that one half, which the next
  // call reads first, is still in the 48 KiB L1.
  static constexpr int64_t kSegmentBytes = int64_t(32) << 10;

  static bool suits(int64_t m, int64_t n, int64_t k) {
    return m >= 1 && m <= kMaxBatch && n > 0 && k > 0 &&
           n * k * int64_t(sizeof(scalar_t)) <= kMaxWeightBytes;
  }

  SmallBatchGemm() = default;
  // w: [n, k], any strides.
  explicit SmallBatchGemm(const at::Tensor& w)
      : kernels_(&small_batch_kernels<scalar_t>()), n_(w.size(0)), k_(w.size(1)) {
    const int64_t width = kernels_->width;
    const int64_t panels = (n_ + width - 1) / width;
    // panels_[p, kk, j] = w[p * width + j, kk], zeros past n: the panels of w^T [k, n].
    // For the backward's transposed weight with n = width, that is the weight itself,
    // used without a copy.
    at::Tensor wt = w.t();
    if (panels * width != n_) {
      at::Tensor wide = at::zeros({k_, panels * width}, w.options());
      wide.narrow(1, 0, n_).copy_(wt);
      wt = wide;
    }
    panels_ = cached_contiguous(wt.reshape({k_, panels, width}).permute({1, 0, 2}));
    half_ = k_ * width * int64_t(sizeof(scalar_t)) > kSegmentBytes ? k_ / 2 : k_;
  }

  bool defined() const { return panels_.defined(); }

  // C[:m] = A[:m] @ W^T + beta * C[:m], m <= kMaxBatch. With beta == 0, C is not read.
  // Each call reverses the order of the previous one (panels, and halves of a panel).
  void run(int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
           int64_t ldc) {
    kernels_->gemm(panels_.template const_data_ptr<scalar_t>(), n_, k_, half_, reverse_, m, a,
                   lda, beta, c, ldc);
    reverse_ = !reverse_;
  }

 private:
  const SmallBatchKernels<scalar_t>* kernels_ = nullptr;
  int64_t n_ = 0, k_ = 0, half_ = 0;
  at::Tensor panels_;  // [panels, k, width]
  bool reverse_ = false;
};

}  // namespace gatedrnn
