// Rows of bfloat16 widened and rounded for one ISA: setup.py compiles this file once per
// ISA, and the compiler vectorizes the loops for it.
#include "bf16_rows.h"

#include <cstring>

namespace gatedrnn {
namespace CPU_CAPABILITY {
namespace {

template <typename scalar_t>
void widen(const uint16_t* src, int64_t src_ld, int64_t rows, int64_t cols, scalar_t* dst,
           int64_t dst_ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* s = src + r * src_ld;
    scalar_t* d = dst + r * dst_ld;
    for (int64_t j = 0; j < cols; ++j) {
      const uint32_t bits = uint32_t(s[j]) << 16;
      float f;
      std::memcpy(&f, &bits, sizeof(f));
      d[j] = static_cast<scalar_t>(f);
    }
  }
}

template <typename scalar_t>
void round(const scalar_t* src, int64_t src_ld, int64_t rows, int64_t cols, uint16_t* dst,
           int64_t dst_ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* s = src + r * src_ld;
    uint16_t* d = dst + r * dst_ld;
    for (int64_t j = 0; j < cols; ++j) {
      const float f = static_cast<float>(s[j]);
      uint32_t bits;
      std::memcpy(&bits, &f, sizeof(bits));
      // c10::BFloat16's round_to_nearest_even, as a select the compiler vectorizes
      const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
      d[j] = (bits & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t(0x7FC0) : uint16_t(rounded);
    }
  }
}

}  // namespace

GATEDRNN_CPU_KERNEL_TABLE(Bf16RowKernels, bf16_row_kernels, &widen<scalar_t>,
                          &round<scalar_t>)

}  // namespace CPU_CAPABILITY
}  // namespace gatedrnn
