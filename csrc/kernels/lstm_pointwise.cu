// LSTM forward pointwise step: gates from the hoisted input projection plus the
// recurrent GEMM, cell update, and h = o * tanh(c), one thread per (row, unit).
// Half types compute in fp32 and keep the cell state in fp32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "lstm_pointwise.h"

namespace gatedrnn {
namespace kernels {
namespace {

template <typename T> struct Math { using type = float; };
template <> struct Math<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Math<T>::type to_math(T v) {
  return static_cast<typename Math<T>::type>(v);
}
template <> __device__ __forceinline__ float to_math(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_math(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T, typename M> __device__ __forceinline__ T from_math(M v) {
  return static_cast<T>(v);
}
template <> __device__ __forceinline__ __half from_math(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_math(float v) {
  return __float2bfloat16(v);
}

template <typename M> __device__ __forceinline__ M sigmoid(M x) {
  return M(1) / (M(1) + exp(-x));
}

template <typename scalar_t>
__global__ void lstm_pointwise_forward_kernel(LstmPointwiseParams<scalar_t> p) {
  using M = typename Math<scalar_t>::type;
  const int64_t H = p.hidden;
  const int64_t total = p.rows * H;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / H, j = e - b * H;
    scalar_t* ws = p.workspace + b * 5 * H;
    const scalar_t* hg = p.hidden_gates + b * 4 * H;
    M pre[4];
#pragma unroll
    for (int gate = 0; gate < 4; ++gate) {
      const int64_t o = gate * H + j;
      pre[gate] = to_math(ws[o]) + to_math(hg[o]) + to_math(p.bias[o]);
    }
    const M i = sigmoid(pre[0]), f = sigmoid(pre[1]), g = tanh(pre[2]), o = sigmoid(pre[3]);
    const M c = f * static_cast<M>(p.c_state[e]) + i * g;
    const M h = o * tanh(c);
    ws[j] = from_math<scalar_t>(i);
    ws[H + j] = from_math<scalar_t>(f);
    ws[2 * H + j] = from_math<scalar_t>(g);
    ws[3 * H + j] = from_math<scalar_t>(o);
    ws[4 * H + j] = from_math<scalar_t>(c);
    p.c_state[e] = static_cast<float>(c);
    p.h_out[b * p.h_out_ld + j] = from_math<scalar_t>(h);
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t lstm_pointwise_forward(const LstmPointwiseParams<scalar_t>& p, cudaStream_t stream) {
  const int64_t total = p.rows * p.hidden;
  if (total == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const int grid = static_cast<int>(blocks < 65535 ? blocks : 65535);
  lstm_pointwise_forward_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template cudaError_t lstm_pointwise_forward<float>(const LstmPointwiseParams<float>&,
                                                   cudaStream_t);
template cudaError_t lstm_pointwise_forward<double>(const LstmPointwiseParams<double>&,
                                                    cudaStream_t);
template cudaError_t lstm_pointwise_forward<__half>(const LstmPointwiseParams<__half>&,
                                                    cudaStream_t);
template cudaError_t lstm_pointwise_forward<__nv_bfloat16>(
    const LstmPointwiseParams<__nv_bfloat16>&, cudaStream_t);

}  // namespace kernels
}  // namespace gatedrnn
