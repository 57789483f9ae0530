#pragma once
// Torch-free interface of the Elman RNN per-step pointwise kernels (CUDA):
//   h' = act(x @ w_ih^T + b_ih + h @ w_hh^T + b_hh), act = tanh or relu.
// No workspace: the output alone differentiates tanh (1 - h^2) and relu (h > 0).
// Packed sequences: a step touches only its first `rows` batch rows.
// GEMM results come in acc_t<T> (fp32 for the half types; see lstm_pointwise.h).
#include "common.h"

namespace gatedrnn {
namespace kernels {

template <typename T>
struct RnnForwardStepParams {
  int64_t rows = 0;                  // n: live batch rows at this step
  int64_t hidden = 0;                // H
  bool relu = false;
  T* output = nullptr;               // [n, H] this step's rows, out: h
  // [n, x_ld] x @ w_ih^T; for float/double the output rows themselves
  const acc_t<T>* x_gates = nullptr;
  int64_t x_ld = 0;
  const acc_t<T>* hidden_gates = nullptr;  // [n, H] h_prev @ w_hh^T
  const T* b_ih = nullptr;           // [H] or null
  const T* b_hh = nullptr;           // [H] or null
  T* h_state = nullptr;              // [n, H] out: h (for the next GEMM)
};

template <typename T>
struct RnnBackwardStepParams {
  int64_t rows = 0;                  // n
  int64_t hidden = 0;                // H
  bool relu = false;
  const T* grad_output = nullptr;    // [n, H] this step's rows of dL/doutput
  const acc_t<T>* dh_state = nullptr;  // [n, H] dL/dh from later steps
  const T* output = nullptr;         // [n, H] this step's rows of the forward output
  T* grad_gates = nullptr;           // [n, H] out: dL/d(pre-activation)
  // Gather of the previous state for the weight gradient (see LstmBackwardStepParams).
  const T* out_prev = nullptr;       // [from_seq, H] or null when from_seq == 0
  const T* h0 = nullptr;             // [N, H]
  int64_t from_seq = 0;
  T* h_prev_out = nullptr;           // [n, H] or null (skipped)
};

template <typename T>
cudaError_t rnn_forward_step(const RnnForwardStepParams<T>& p, cudaStream_t stream);

template <typename T>
cudaError_t rnn_backward_step(const RnnBackwardStepParams<T>& p, cudaStream_t stream);

}  // namespace kernels
}  // namespace gatedrnn
