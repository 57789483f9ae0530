#pragma once
// Torch-free interface of the LSTM per-step pointwise kernels (CUDA).
// The glue in csrc/cuda/lstm.cpp fills the params from tensors and passes the
// caller's stream; every pointer is device memory, row-major and contiguous
// unless a leading dimension says otherwise.
//
// Workspace row (5H), as on the CPU: activated gates i, f, g, o, then c.
// Packed sequences: a step touches only its first `rows` batch rows.
//
// GEMM results (x @ w_ih^T, h @ w_hh^T, dh @ w_hh) come in acc_t<T>: for the
// half types the glue has cuBLAS write them in fp32, so nothing is rounded to
// 16 bits between the GEMM's fp32 accumulator and the pointwise math. For
// float/double acc_t<T> is T and x_gates may point into the workspace itself.
#include "common.h"

namespace gatedrnn {
namespace kernels {

// One forward step over the n live rows, after the recurrent GEMM
// hidden_gates = h_prev @ w_hh^T.
template <typename T>
struct LstmForwardStepParams {
  int64_t rows = 0;                  // n: live batch rows at this step
  int64_t hidden = 0;                // H
  T* workspace = nullptr;            // [n, 5H] this step's rows, out: i, f, g, o, c; or null
  const acc_t<T>* x_gates = nullptr; // [n, x_ld] x @ w_ih^T (first 4H columns of each row)
  int64_t x_ld = 0;
  const acc_t<T>* hidden_gates = nullptr;  // [n, 4H] h_prev @ w_hh^T
  const T* b_ih = nullptr;           // [4H] or null
  const T* b_hh = nullptr;           // [4H] or null
  acc_t<T>* c_state = nullptr;       // [n, H] cell state, updated in place
  T* h_out = nullptr;                // [n, h_out_ld] o * tanh(c) (the output rows, or the
                                     // pre-projection buffer with w_hr)
  int64_t h_out_ld = 0;
  T* h_state = nullptr;              // [n, H] second copy of h for the next GEMM, or null
};

// One backward step over the n live rows, before the GEMM dh_prev = dgates @ w_hh.
template <typename T>
struct LstmBackwardStepParams {
  int64_t rows = 0;                  // n
  int64_t hidden = 0;                // H
  int64_t state = 0;                 // P: proj_size with w_hr, else H
  // dL/d(o * tanh c) of this step = grad_out + grad_h (either may be null)
  const T* grad_out = nullptr;       // [n, H] rows of dL/doutput
  const acc_t<T>* grad_h = nullptr;  // [n, H] dL/dh from later steps (or through w_hr)
  const T* workspace = nullptr;      // [n, 5H] this step's rows
  // The cell state the step started from: row b < from_seq continues its
  // sequence (previous processed step's c in workspace_prev, column 4H),
  // the others start from c0.
  const T* workspace_prev = nullptr; // [from_seq, 5H] or null when from_seq == 0
  const T* c0 = nullptr;             // [N, H]
  int64_t from_seq = 0;
  acc_t<T>* dc_state = nullptr;      // [n, H] in: dL/dc, out: dL/dc_prev
  T* grad_gates = nullptr;           // [n, 4H] out: dL/d(pre-activation) of i, f, g, o
  // Gather of the previous (projected) hidden state for the weight gradient:
  // h_prev_out[b] = out_prev[b] for b < from_seq, else h0[b]. Skipped when
  // h_prev_out is null.
  const T* out_prev = nullptr;       // [from_seq, P] or null when from_seq == 0
  const T* h0 = nullptr;             // [N, P]
  T* h_prev_out = nullptr;           // [n, P]
};

template <typename T>
cudaError_t lstm_forward_step(const LstmForwardStepParams<T>& p, cudaStream_t stream);

template <typename T>
cudaError_t lstm_backward_step(const LstmBackwardStepParams<T>& p, cudaStream_t stream);

}  // namespace kernels
}  // namespace gatedrnn
