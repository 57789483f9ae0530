#pragma once
// The micro-kernel of the small-batch recurrent GEMM (cpu/small_batch_gemm.h), built
// once per ISA (isa/small_batch_panel.cpp): a few rows of A against W^T, panel by panel.
#include <cstdint>

#include "../capability.h"

namespace gatedrnn {

template <typename scalar_t>
struct SmallBatchKernels {
  // Columns per panel: four vectors of the ISA (64 floats with AVX-512, 32 with AVX2
  // and the portable build).
  int64_t width;
  // c[:m, :n] = a[:m, :k] @ W^T + beta * c[:m, :n] (c not read when beta == 0), from the
  // panels of W^T: panels [ceil(n / width), k, width], each panel's rows contiguous, zeros
  // past n. Each output is one chain of fused multiply-adds over k in order or, when
  // half < k, one over [0, half) and one over [half, k), then their sum. reverse visits
  // the panels last to first and runs each panel's [half, k) chain first: the same bits
  // either way, but what was read last is still in L1 when the next call starts.
  void (*gemm)(const scalar_t* panels, int64_t n, int64_t k, int64_t half, bool reverse,
               int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
               int64_t ldc);
};

GATEDRNN_CPU_KERNELS(SmallBatchKernels, small_batch_kernels)

}  // namespace gatedrnn
