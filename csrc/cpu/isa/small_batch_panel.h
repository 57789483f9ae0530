#pragma once
// The micro-kernel of the small-batch recurrent GEMM (cpu/small_batch_gemm.h), built
// once per ISA (isa/small_batch_panel.cpp): one panel of W^T against a few rows of A.
#include <cstdint>

#include "../capability.h"

namespace gatedrnn {

template <typename scalar_t>
struct SmallBatchKernels {
  // Columns per panel: four vectors of the ISA (64 floats with AVX-512, 32 with AVX2
  // and the portable build).
  int64_t width;
  // c[:m, :cols] = a[:m, :k] @ panel + beta * c[:m, :cols] (c not read when beta == 0),
  // for one panel [k, width] of W^T, its rows contiguous; cols <= width are stored.
  // Each output is one chain of fused multiply-adds over k in order or, when half < k,
  // one over [0, half) and one over [half, k), then their sum; low_first runs the
  // [0, half) chain first (the other order gives the same bits: it is read to keep in
  // L1 the half the next call starts with).
  void (*panel)(const scalar_t* panel, int64_t k, int64_t half, bool low_first, int64_t m,
                const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c, int64_t ldc,
                int64_t cols);
};

GATEDRNN_CPU_KERNELS(SmallBatchKernels, small_batch_kernels)

}  // namespace gatedrnn
