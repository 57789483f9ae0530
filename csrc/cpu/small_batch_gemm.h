#pragma once
// The per-step recurrent GEMM for batches of a few rows, C[m, n] = A[m, k] @ W^T: a
// GEMV-like product, with four independent chains per row where the general kernel's
// tiles have two (gemm.h).
//
// Written when the tiles were MKL's: its packed GEMM runs as a GEMV and took ~0.8 us per step for a 64 KiB LSTM
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
// panels for the ISA in use.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "gemm.h"
#include "isa/small_batch_panel.h"

namespace gatedrnn {

template <typename scalar_t>
class SmallBatchGemm {
 public:
  // Batches of up to kAnyWeightBatch rows run here whatever the weight's size, up to
  // kMaxBatch rows if the weight has at most kMaxWeightBytes. Against our GEMM's tiles
  // (one Zen 3 core, AVX2): m = 1 with a 3 MB weight (n, k) = (1500, 512), 50 us here
  // against 69; m = 2, 62 against 72; m = 4, 114 against 89 (2 to 4 MB weights likewise).
  // The small limit for m <= 4 was measured against MKL's packed GEMM, which this project
  // used before: m = 1 with a 256 KiB weight, 1.9 us for MKL against 3.0 us here; m = 8
  // with 64 KiB, 1.8 against 1.3-2.1 us.
  static constexpr int64_t kAnyWeightBatch = 2;
  static constexpr int64_t kMaxBatch = 4;
  static constexpr int64_t kMaxWeightBytes = int64_t(128) << 10;
  // Panels above this are summed in two halves of k, so that one half, which the next
  // call reads first, is still in the 48 KiB L1.
  static constexpr int64_t kSegmentBytes = int64_t(32) << 10;

  static bool suits(int64_t m, int64_t n, int64_t k) {
    return m >= 1 && n > 0 && k > 0 &&
           (m <= kAnyWeightBatch ||
            (m <= kMaxBatch && n * k * int64_t(sizeof(scalar_t)) <= kMaxWeightBytes));
  }

  SmallBatchGemm() = default;
  // w: [n, k], any strides.
  explicit SmallBatchGemm(const at::Tensor& w)
      : kernels_(&small_batch_kernels<scalar_t>()), n_(w.size(0)), k_(w.size(1)),
        panels_(pack_panels<scalar_t>(w, n_, kernels_->width)) {
    half_ = k_ * kernels_->width * int64_t(sizeof(scalar_t)) > kSegmentBytes ? k_ / 2 : k_;
  }

  bool defined() const { return panels_.defined(); }

  // C[:m] = A[:m] @ W^T + beta * C[:m], m <= kMaxBatch. With beta == 0, C is not read.
  // reverse: the visiting order, which the caller flips from one call to the next
  // (panels, and halves of a panel).
  void run(int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c, int64_t ldc,
           bool reverse) const {
    kernels_->gemm(panels_.template const_data_ptr<scalar_t>(), n_, k_, half_, reverse, m, a,
                   lda, beta, c, ldc);
  }

 private:
  const SmallBatchKernels<scalar_t>* kernels_ = nullptr;
  int64_t n_ = 0, k_ = 0, half_ = 0;
  at::Tensor panels_;  // [panels, k, width] (pack_panels)
};

}  // namespace gatedrnn
