#pragma once
// Torch-free interface of the LSTM per-step pointwise kernel (CUDA).
// The glue in csrc/cuda/ fills the params from tensors and passes the caller's stream.
#include <cuda_runtime.h>

#include <cstdint>

namespace gatedrnn {
namespace kernels {

// One step of the LSTM forward over the n live rows, fused after the recurrent GEMM.
// Row layouts match the CPU path: workspace row = [i f g o | c] (5H).
template <typename scalar_t>
struct LstmPointwiseParams {
  int64_t rows = 0;           // n: live batch rows at this step
  int64_t hidden = 0;         // H
  scalar_t* workspace = nullptr;       // [n, 5H] in: input projection (4H), out: gates and c
  const scalar_t* hidden_gates = nullptr;  // [n, 4H] h_prev @ w_hh^T
  const scalar_t* bias = nullptr;      // [4H] b_ih + b_hh
  float* c_state = nullptr;            // [n, H] fp32 cell state, updated in place
  scalar_t* h_out = nullptr;           // [n, h_out_ld] o * tanh(c)
  int64_t h_out_ld = 0;
};

template <typename scalar_t>
cudaError_t lstm_pointwise_forward(const LstmPointwiseParams<scalar_t>& p, cudaStream_t stream);

}  // namespace kernels
}  // namespace gatedrnn
