// One chunk-GEMM block of the backward, timed alone on one core: our AVX-512 kernels
// (csrc/cpu/isa/gemm_tiles.cpp, included whole) against a bare 12 x 32 tile loop with the
// same loads and fused multiply-adds, to tell the kernels' own rate from what the
// backward adds around them (benchmarks/results/cpu-intel.md, tenth session of
// 2026-12-05). Not built by setup.py or CI; from the repository root, in the venv:
//
//   T=$(python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
//   g++ -O3 -std=c++17 -mavx512f -mavx512dq -mavx512bw -mavx512vl -mfma \
//     -DCPU_CAPABILITY=AVX512 -DCPU_CAPABILITY_AVX512 -I$T/include \
//     benchmarks/tools/gemm_block.cpp -o /tmp/gemm_block -L$T/lib -lc10 -Wl,-rpath,$T/lib
//   /tmp/gemm_block 128 128 1024 512
//
// Arguments m n k ld: a weight gradient's block C[m, n] = dg^T @ B, dg being a chunk of k
// gate-gradient rows ld floats apart (ld = 4H for the LSTM), B packed in panels; and the
// input gradient C[k, n] = dg @ W, whole rows of dg (ld columns) against a packed W.
#include "../../csrc/cpu/isa/gemm_tiles.cpp"

#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// The fastest of `reps` runs of f, in seconds.
template <typename F>
double fastest(int reps, const F& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

// 12 rows of a packed A ([k][12]) against one packed panel of B ([k][32]).
void bare_tile(int64_t k, const float* a, const float* b, float* c, int64_t ldc) {
  __m512 acc0[12], acc1[12];
#pragma GCC unroll 16
  for (int r = 0; r < 12; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m512 b0 = _mm512_loadu_ps(b + kk * 32), b1 = _mm512_loadu_ps(b + kk * 32 + 16);
#pragma GCC unroll 16
    for (int r = 0; r < 12; ++r) {
      const __m512 av = _mm512_set1_ps(a[kk * 12 + r]);
      acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < 12; ++r) {
    _mm512_storeu_ps(c + r * ldc, acc0[r]);
    _mm512_storeu_ps(c + r * ldc + 16, acc1[r]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace gatedrnn::AVX512;
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s m n k ld\n", argv[0]);
    return 2;
  }
  const int64_t m = std::atol(argv[1]), n = std::atol(argv[2]), k = std::atol(argv[3]),
                ld = std::atol(argv[4]);
  const int64_t panels = (n + 31) / 32;
  std::vector<float> dg(k * ld), b(panels * std::max(k, ld) * 32), c(std::max(m, k) * n),
      a(m * k);
  for (float& v : dg) v = float(std::rand() % 100) * 0.01f;
  for (float& v : b) v = float(std::rand() % 100) * 0.01f;
  const double flops = 2.0 * double(m) * double(n) * double(k);
  const int reps = 100;
  // weight gradient: dg^T packed (as run_shared_a does), then the tiles on it
  const double pack = fastest(reps, [&] { pack_a<float>(m, k, dg.data(), 1, ld, a.data()); });
  const double tiles = fastest(reps, [&] {
    gemm_packed_a<float>(m, n, k, a.data(), b.data(), 32, k * 32, 0.f, c.data(), n);
  });
  std::printf("weight gradient [%ld, %ld], k = %ld, dg rows %ld floats apart: packing A %.1f us, "
              "tiles %.1f us (%.1f GFLOP/s), both %.1f GFLOP/s\n",
              long(m), long(n), long(k), long(ld), pack * 1e6, tiles * 1e6, flops / tiles * 1e-9,
              flops / (pack + tiles) * 1e-9);
  // input gradient: dg's rows read in place as A
  const double input = fastest(reps, [&] {
    gemm<float>(k, n, ld, dg.data(), ld, 1, b.data(), 32, ld * 32, 0.f, c.data(), n);
  });
  std::printf("input gradient [%ld, %ld], k = %ld: %.1f us (%.1f GFLOP/s)\n", long(k), long(n),
              long(ld), input * 1e6, 2.0 * double(k) * double(n) * double(ld) / input * 1e-9);
  // the bare tile loop over the packed A of the first case
  const int64_t tiles12 = m / 12;
  const double bare = fastest(reps, [&] {
    for (int64_t p = 0; p < panels; ++p) {
      for (int64_t t = 0; t < tiles12; ++t) {
        bare_tile(k, a.data() + t * 12 * k, b.data() + p * k * 32,
                  c.data() + t * 12 * n + p * 32, n);
      }
    }
  });
  std::printf("bare 12 x 32 tile loop, %ld rows: %.1f GFLOP/s\n", long(tiles12 * 12),
              2.0 * double(tiles12 * 12) * double(panels * 32) * double(k) / bare * 1e-9);
  return 0;
}
