// Elman RNN per-step pointwise kernels (tanh or relu). One thread per
// (row, unit); fp32 math for half types.
#include "device.cuh"
#include "rnn_pointwise.h"

namespace gatedrnn {
namespace kernels {
namespace {

using namespace dev;

template <typename T>
__global__ void rnn_forward_step_kernel(RnnForwardStepParams<T> p) {
  using M = acc_t<T>;
  const int64_t H = p.hidden;
  GATEDRNN_FOR_EACH_ROW(b, p.rows) {
    GATEDRNN_FOR_EACH_COL(j, H) {
      const int64_t e = b * H + j;
      const M pre = p.x_gates[b * p.x_ld + j] + p.hidden_gates[e] + load_or_zero(p.b_ih, j) +
                    load_or_zero(p.b_hh, j);
      // relu keeps NaN (pre > 0 is false for NaN, so test the other way round)
      const M h = p.relu ? (pre < M(0) ? M(0) : pre) : tanh_(pre);
      const T hv = from_acc<T>(h);
      p.output[e] = hv;
      p.h_state[e] = hv;
    }
  }
}

template <typename T>
__global__ void rnn_backward_step_kernel(RnnBackwardStepParams<T> p) {
  using M = acc_t<T>;
  const int64_t H = p.hidden;
  const M one(1);
  GATEDRNN_FOR_EACH_ROW(b, p.rows) {
    const bool cont = b < p.from_seq;
    GATEDRNN_FOR_EACH_COL(j, H) {
      const int64_t e = b * H + j;
      const M h = to_acc(p.output[e]);
      const M d = to_acc(p.grad_output[e]) + p.dh_state[e];
      // relu' selects, as torch.nn does: NaN outputs pass d on, h <= 0 gives 0 even for
      // an infinite d (no 0 * inf).
      const M dpre = p.relu ? (h <= M(0) ? M(0) : d) : d * (one - h * h);
      p.grad_gates[e] = from_acc<T>(dpre);
      if (p.h_prev_out) p.h_prev_out[e] = cont ? p.out_prev[e] : p.h0[e];
    }
  }
}

}  // namespace

template <typename T>
cudaError_t rnn_forward_step(const RnnForwardStepParams<T>& p, cudaStream_t stream) {
  return launch_step(rnn_forward_step_kernel<T>, p, stream);
}

template <typename T>
cudaError_t rnn_backward_step(const RnnBackwardStepParams<T>& p, cudaStream_t stream) {
  return launch_step(rnn_backward_step_kernel<T>, p, stream);
}

#define GATEDRNN_INSTANTIATE(T)                                                              \
  template cudaError_t rnn_forward_step<T>(const RnnForwardStepParams<T>&, cudaStream_t);    \
  template cudaError_t rnn_backward_step<T>(const RnnBackwardStepParams<T>&, cudaStream_t);
GATEDRNN_INSTANTIATE(float)
GATEDRNN_INSTANTIATE(double)
GATEDRNN_INSTANTIATE(__half)
GATEDRNN_INSTANTIATE(__nv_bfloat16)
#undef GATEDRNN_INSTANTIATE

}  // namespace kernels
}  // namespace gatedrnn
