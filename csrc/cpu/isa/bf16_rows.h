#pragma once
// Rows of bfloat16 widened and rounded, built once per ISA (isa/bf16_rows.cpp): the
// bfloat16 workspace of the LSTM and GRU (cpu/recurrence.h, WorkspaceRows) is written
// and read through them a block of a step at a time. A plain element loop in the
// baseline build (SSE2) made the LSTM's bfloat16 large training step 15% slower than a
// float32 workspace; compiled per ISA, the compiler vectorizes the same loops.
#include <cstdint>

#include "../capability.h"

namespace gatedrnn {

template <typename scalar_t>
struct Bf16RowKernels {
  // dst[r * dst_ld + j] = src[r * src_ld + j] (bfloat16 bits) widened, r < rows, j < cols
  void (*widen)(const uint16_t* src, int64_t src_ld, int64_t rows, int64_t cols,
                scalar_t* dst, int64_t dst_ld);
  // dst[r * dst_ld + j] = src[r * src_ld + j] rounded to bfloat16 as torch rounds: to
  // nearest even, denormals kept, a NaN torch's NaN (0x7FC0)
  void (*round)(const scalar_t* src, int64_t src_ld, int64_t rows, int64_t cols,
                uint16_t* dst, int64_t dst_ld);
};

GATEDRNN_CPU_KERNELS(Bf16RowKernels, bf16_row_kernels)

}  // namespace gatedrnn
