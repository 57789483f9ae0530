// The FMA peak of this machine with the ISA in use, and the bfloat16 kernels' peak: every
// thread runs the register-only loop (isa/fma_peak.cpp, isa/gemm_bf16.cpp) at the same
// time, so shared clocks and SMT siblings count.
#include <algorithm>
#include <chrono>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "isa/fma_peak.h"
#include "isa/gemm_bf16.h"

namespace gatedrnn {
namespace {

// run(iterations, &sink) -> floating-point operations: a register-only loop.
template <typename scalar_t>
struct PeakLoop {
  double (*run)(int64_t iterations, scalar_t* sink);
};

template <typename scalar_t>
double gflops(PeakLoop<scalar_t> k, int threads, double seconds) {
  scalar_t sink = 0;
  // A short run first: how many iterations take `seconds` on one thread.
  int64_t iterations = 1 << 16;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    k.run(iterations, &sink);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s > 0.02 || iterations > (int64_t(1) << 40)) {
      iterations = std::max<int64_t>(1, static_cast<int64_t>(iterations * seconds / std::max(s, 1e-9)));
      break;
    }
    iterations *= 4;
  }
  threads = std::max(1, threads);
  std::vector<double> flops(threads, 0.0);
  std::vector<scalar_t> sinks(threads, scalar_t(0));
  const auto t0 = std::chrono::steady_clock::now();
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    const int id = omp_get_thread_num();
    flops[id] = k.run(iterations, &sinks[id]);
  }
#else
  threads = 1;
  flops[0] = k.run(iterations, &sinks[0]);
#endif
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double total = 0;
  for (double f : flops) total += f;
  return total / s / 1e9;
}

}  // namespace

double fma_peak_gflops(int threads, bool float64, double seconds) {
  return float64 ? gflops<double>({fma_peak_kernels<double>().run}, threads, seconds)
                 : gflops<float>({fma_peak_kernels<float>().run}, threads, seconds);
}

double bf16_peak_gflops(int threads, double seconds) {
  const GemmBf16Kernels* k = gemm_bf16_kernels();
  return k == nullptr ? 0.0 : gflops<float>({k->peak}, threads, seconds);
}

}  // namespace gatedrnn
