// The FMA-peak loop for one ISA: setup.py compiles this file once per ISA. Enough
// independent accumulators to cover the FMA latency on every port: 12 with AVX2 (two
// 256-bit FMA ports, latency 4-5 on Zen 3 and Intel cores), 24 with AVX-512.
#include "fma_peak.h"

#include "vec_math.h"

namespace gatedrnn {
namespace CPU_CAPABILITY {
namespace {

#ifdef CPU_CAPABILITY_AVX512
constexpr int kChains = 24;
#else
constexpr int kChains = 12;
#endif

template <typename scalar_t>
double run(int64_t iterations, scalar_t* sink) {
  using V = Vec<scalar_t>;
  V acc[kChains];
#pragma GCC unroll 32
  for (int j = 0; j < kChains; ++j) acc[j] = V(scalar_t(j) * scalar_t(1e-3));
  // x -> x * m + a converges to a / (1 - m): the values stay finite however long it runs.
  const V m(scalar_t(0.999)), a(scalar_t(1e-4));
  for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 32
    for (int j = 0; j < kChains; ++j) acc[j] = at::vec::fmadd(acc[j], m, a);
  }
  V total = acc[0];
  for (int j = 1; j < kChains; ++j) total = total + acc[j];
  scalar_t out[V::size()];
  total.store(out);
  *sink = out[0];
  return 2.0 * double(iterations) * kChains * V::size();
}

}  // namespace

GATEDRNN_CPU_KERNEL_TABLE(FmaPeakKernels, fma_peak_kernels, &run<scalar_t>)

}  // namespace CPU_CAPABILITY
}  // namespace gatedrnn
