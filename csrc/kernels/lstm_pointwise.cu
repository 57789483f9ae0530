// LSTM per-step pointwise kernels: the forward gate activations and cell
// update fused after the recurrent GEMM, and the backward gate gradients fused
// before the dh GEMM. One thread per (row, unit); fp32 math for half types.
#include "device.cuh"
#include "lstm_pointwise.h"

namespace gatedrnn {
namespace kernels {
namespace {

using namespace dev;

template <typename T>
__global__ void lstm_forward_step_kernel(LstmForwardStepParams<T> p) {
  using M = acc_t<T>;
  const int64_t H = p.hidden;
  GATEDRNN_FOR_EACH_ROW(b, p.rows) {
    T* ws = p.workspace ? p.workspace + b * 5 * H : nullptr;
    const M* xg = p.x_gates + b * p.x_ld;
    const M* hg = p.hidden_gates + b * 4 * H;
    GATEDRNN_FOR_EACH_COL(j, H) {
      M pre[4];
#pragma unroll
      for (int gate = 0; gate < 4; ++gate) {
        const int64_t o = gate * H + j;
        pre[gate] = xg[o] + hg[o] + load_or_zero(p.b_ih, o) + load_or_zero(p.b_hh, o);
      }
      const M i = sigmoid_(pre[0]), f = sigmoid_(pre[1]), g = tanh_(pre[2]),
              o = sigmoid_(pre[3]);
      M* cs = p.c_state + b * H + j;
      const M c = f * *cs + i * g;
      const M h = o * tanh_(c);
      if (ws) {
        ws[j] = from_acc<T>(i);
        ws[H + j] = from_acc<T>(f);
        ws[2 * H + j] = from_acc<T>(g);
        ws[3 * H + j] = from_acc<T>(o);
        ws[4 * H + j] = from_acc<T>(c);
      }
      *cs = c;
      const T hv = from_acc<T>(h);
      p.h_out[b * p.h_out_ld + j] = hv;
      if (p.h_state) p.h_state[b * H + j] = hv;
    }
  }
}

template <typename T>
__global__ void lstm_backward_step_kernel(LstmBackwardStepParams<T> p) {
  using M = acc_t<T>;
  const int64_t H = p.hidden, P = p.state;
  const M one(1);
  GATEDRNN_FOR_EACH_ROW(b, p.rows) {
    const bool cont = b < p.from_seq;
    const T* ws = p.workspace + b * 5 * H;
    const T* cprev = cont ? p.workspace_prev + b * 5 * H + 4 * H : p.c0 + b * H;
    T* dg = p.grad_gates + b * 4 * H;
    GATEDRNN_FOR_EACH_COL(j, H) {
      const M i = to_acc(ws[j]), f = to_acc(ws[H + j]), g = to_acc(ws[2 * H + j]),
              o = to_acc(ws[3 * H + j]), c = to_acc(ws[4 * H + j]);
      const M cp = to_acc(cprev[j]);
      M dh = load_or_zero(p.grad_out, b * H + j);
      if (p.grad_h) dh += p.grad_h[b * H + j];
      const M tc = tanh_(c);
      M* dcs = p.dc_state + b * H + j;
      const M dc = *dcs + dh * o * (one - tc * tc);
      dg[j] = from_acc<T>(dc * i * (one - i) * g);
      dg[H + j] = from_acc<T>(dc * f * (one - f) * cp);
      dg[2 * H + j] = from_acc<T>(dc * i * (one - g * g));
      dg[3 * H + j] = from_acc<T>(dh * tc * o * (one - o));
      *dcs = dc * f;
      if (p.h_prev_out && j < P) {
        p.h_prev_out[b * P + j] = cont ? p.out_prev[b * P + j] : p.h0[b * P + j];
      }
    }
  }
}

}  // namespace

template <typename T>
cudaError_t lstm_forward_step(const LstmForwardStepParams<T>& p, cudaStream_t stream) {
  return launch_step(lstm_forward_step_kernel<T>, p, stream);
}

template <typename T>
cudaError_t lstm_backward_step(const LstmBackwardStepParams<T>& p, cudaStream_t stream) {
  return launch_step(lstm_backward_step_kernel<T>, p, stream);
}

#define GATEDRNN_INSTANTIATE(T)                                                                \
  template cudaError_t lstm_forward_step<T>(const LstmForwardStepParams<T>&, cudaStream_t);    \
  template cudaError_t lstm_backward_step<T>(const LstmBackwardStepParams<T>&, cudaStream_t);
GATEDRNN_INSTANTIATE(float)
GATEDRNN_INSTANTIATE(double)
GATEDRNN_INSTANTIATE(__half)
GATEDRNN_INSTANTIATE(__nv_bfloat16)
#undef GATEDRNN_INSTANTIATE

}  // namespace kernels
}  // namespace gatedrnn
