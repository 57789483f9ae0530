#pragma once
// Device helpers shared by the kernels in this folder (included by .cu files only).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace gatedrnn {
namespace kernels {
namespace dev {

template <typename T>
__device__ __forceinline__ acc_t<T> to_acc(T v) {
  return static_cast<acc_t<T>>(v);
}
template <>
__device__ __forceinline__ float to_acc(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Loads an optional element: zero when p is null (absent bias).
template <typename T>
__device__ __forceinline__ acc_t<T> load_or_zero(const T* p, int64_t i) {
  return p ? to_acc(p[i]) : acc_t<T>(0);
}

// tanh. The build uses --use_fast_math, under which tanhf() compiles to
// tanh.approx.f32 (relative error ~2^-11: far outside the float32 parity
// tolerance). expm1f keeps its accurate polynomial under fast math, so
// tanh|x| = e / (e + 2) with e = expm1(2|x|) is accurate to a few ulp.
// |x| is clamped at 9 (tanh(9) rounds to 1 in float) so e stays finite;
// a NaN input stays NaN (the comparison is false).
__device__ __forceinline__ float tanh_(float x) {
  float a = fabsf(x);
  a = a > 9.0f ? 9.0f : a;
  const float e = expm1f(2.0f * a);
  return copysignf(e / (e + 2.0f), x);
}
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }

// 1 / (1 + exp(-x)): exp overflows to +inf for very negative x, giving 0.
__device__ __forceinline__ float sigmoid_(float x) { return 1.0f / (1.0f + __expf(-x)); }
__device__ __forceinline__ double sigmoid_(double x) { return 1.0 / (1.0 + exp(-x)); }

}  // namespace dev

// Launch shape of a per-step pointwise kernel over [rows, cols] elements:
// threadIdx.x/blockIdx.x walk the columns (coalesced), threadIdx.y/blockIdx.y
// the rows, both with grid-stride loops so any size is covered.
struct StepLaunch {
  dim3 grid, block;
};

inline StepLaunch step_launch(int64_t rows, int64_t cols) {
  constexpr int64_t kThreads = 256;
  int64_t bx = (cols + 31) / 32 * 32;
  bx = bx < kThreads ? bx : kThreads;
  if (bx < 32) bx = 32;
  const int64_t by = kThreads / bx;
  int64_t gx = (cols + bx - 1) / bx;
  int64_t gy = (rows + by - 1) / by;
  gx = gx < 65535 ? gx : 65535;
  gy = gy < 65535 ? gy : 65535;
  StepLaunch l;
  l.block = dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by), 1);
  l.grid = dim3(static_cast<unsigned>(gx > 0 ? gx : 1), static_cast<unsigned>(gy > 0 ? gy : 1), 1);
  return l;
}

// Launches a per-step kernel over p.rows x p.hidden elements on the caller's stream.
template <typename Params>
cudaError_t launch_step(void (*kernel)(Params), const Params& p, cudaStream_t stream) {
  if (p.rows <= 0 || p.hidden <= 0) return cudaSuccess;
  const StepLaunch l = step_launch(p.rows, p.hidden);
  kernel<<<l.grid, l.block, 0, stream>>>(p);
  return cudaGetLastError();
}

// Grid-stride loops over the rows and columns of a StepLaunch.
#define GATEDRNN_FOR_EACH_ROW(b, rows)                                                  \
  for (int64_t b = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; b < (rows);         \
       b += int64_t(gridDim.y) * blockDim.y)
#define GATEDRNN_FOR_EACH_COL(j, cols)                                                  \
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < (cols);         \
       j += int64_t(gridDim.x) * blockDim.x)

}  // namespace kernels
}  // namespace gatedrnn
