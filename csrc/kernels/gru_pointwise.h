#pragma once
// Torch-free interface of the GRU per-step pointwise kernels (CUDA).
// Gate order r, z, n as in torch.nn.GRU:
//   r = s(x_r + b_ir + h_r + b_hr), z = s(x_z + b_iz + h_z + b_hz)
//   n = tanh(x_n + b_in + r * (h_n + b_hn)),  h' = (1 - z) * n + z * h
// Workspace row (4H), as on the CPU: activated r, z, n, then hn = h_n + b_hn.
// Packed sequences: a step touches only its first `rows` batch rows.
// GEMM results come in acc_t<T> (fp32 for the half types; see lstm_pointwise.h).
#include "common.h"

namespace gatedrnn {
namespace kernels {

template <typename T>
struct GruForwardStepParams {
  int64_t rows = 0;                  // n: live batch rows at this step
  int64_t hidden = 0;                // H
  T* workspace = nullptr;            // [n, 4H] this step's rows, out: r, z, n, hn; or null
  const acc_t<T>* x_gates = nullptr; // [n, x_ld] x @ w_ih^T (first 3H columns of each row)
  int64_t x_ld = 0;
  const acc_t<T>* hidden_gates = nullptr;  // [n, 3H] h_prev @ w_hh^T
  const T* b_ih = nullptr;           // [3H] or null
  const T* b_hh = nullptr;           // [3H] or null
  T* h_state = nullptr;              // [n, H] in: h_prev, out: h
  T* h_out = nullptr;                // [n, H] this step's output rows
};

template <typename T>
struct GruBackwardStepParams {
  int64_t rows = 0;                  // n
  int64_t hidden = 0;                // H
  // dL/dh of this step: d = grad_output + dh_z + dh_mm. Between steps dL/dh
  // is kept as the sum of two buffers: dh_z (the part that bypasses w_hh,
  // written here) and dh_mm (dgh @ w_hh, written by the glue's GEMM).
  const T* grad_output = nullptr;    // [n, H] this step's rows of dL/doutput
  acc_t<T>* dh_z = nullptr;          // [n, H] in: as above, out: d * z
  const acc_t<T>* dh_mm = nullptr;   // [n, H] or null
  const T* workspace = nullptr;      // [n, 4H] this step's rows
  // The state the step started from: row b < from_seq continues its sequence
  // (out_prev[b], the previous processed step's output), the others start from h0.
  const T* out_prev = nullptr;       // [from_seq, H] or null when from_seq == 0
  const T* h0 = nullptr;             // [N, H]
  int64_t from_seq = 0;
  T* h_prev_out = nullptr;           // [n, H] out: that state (for the weight gradient)
  T* grad_x = nullptr;               // [n, 3H] out: dL/d(x-side pre-activations) r, z, n
  T* grad_h = nullptr;               // [n, 3H] out: dL/d(h-side pre-activations) r, z, n
};

template <typename T>
cudaError_t gru_forward_step(const GruForwardStepParams<T>& p, cudaStream_t stream);

template <typename T>
cudaError_t gru_backward_step(const GruBackwardStepParams<T>& p, cudaStream_t stream);

}  // namespace kernels
}  // namespace gatedrnn
