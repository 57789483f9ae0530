#pragma once
// A register-resident loop of fused multiply-adds, built once per ISA (isa/fma_peak.cpp):
// what one core can compute at most, the benchmark suite's "% of peak" (cpu/fma_peak.h).
#include <cstdint>

#include "../capability.h"

namespace gatedrnn {

template <typename scalar_t>
struct FmaPeakKernels {
  // Runs `iterations` rounds of independent vector FMAs that never touch memory; returns
  // the floating-point operations done (2 per lane per FMA) and writes a result to *sink
  // so that the loop is not optimized away.
  double (*run)(int64_t iterations, scalar_t* sink);
};

GATEDRNN_CPU_KERNELS(FmaPeakKernels, fma_peak_kernels)

// GFLOP/s of the loop above on `threads` threads at once (float32, or float64), each
// running about `seconds`; defined in cpu/fma_peak.cpp.
double fma_peak_gflops(int threads, bool float64, double seconds);
// Likewise for the bfloat16 kernels in use (isa/gemm_bf16.h): their instruction (AMX's
// TDPBF16PS, or VDPBF16PS) alone; 0 when there are none.
double bf16_peak_gflops(int threads, double seconds);

}  // namespace gatedrnn
