// GRU per-step pointwise kernels (forward after the recurrent GEMM, backward
// before the dh GEMM). One thread per (row, unit); fp32 math for half types.
#include "device.cuh"
#include "gru_pointwise.h"

namespace gatedrnn {
namespace kernels {
namespace {

using namespace dev;

template <typename T>
__global__ void gru_forward_step_kernel(GruForwardStepParams<T> p) {
  using M = acc_t<T>;
  const int64_t H = p.hidden;
  GATEDRNN_FOR_EACH_ROW(b, p.rows) {
    T* ws = p.workspace ? p.workspace + b * 4 * H : nullptr;
    const M* xg = p.x_gates + b * p.x_ld;
    const M* hg = p.hidden_gates + b * 3 * H;
    GATEDRNN_FOR_EACH_COL(j, H) {
      const M r = sigmoid_(xg[j] + load_or_zero(p.b_ih, j) + hg[j] + load_or_zero(p.b_hh, j));
      const M z = sigmoid_(xg[H + j] + load_or_zero(p.b_ih, H + j) + hg[H + j] +
                           load_or_zero(p.b_hh, H + j));
      const M hn = hg[2 * H + j] + load_or_zero(p.b_hh, 2 * H + j);
      const M n = tanh_(xg[2 * H + j] + load_or_zero(p.b_ih, 2 * H + j) + r * hn);
      T* hs = p.h_state + b * H + j;
      const M h = n + z * (to_acc(*hs) - n);
      if (ws) {
        ws[j] = from_acc<T>(r);
        ws[H + j] = from_acc<T>(z);
        ws[2 * H + j] = from_acc<T>(n);
        ws[3 * H + j] = from_acc<T>(hn);
      }
      const T hv = from_acc<T>(h);
      *hs = hv;
      p.h_out[b * H + j] = hv;
    }
  }
}

template <typename T>
__global__ void gru_backward_step_kernel(GruBackwardStepParams<T> p) {
  using M = acc_t<T>;
  const int64_t H = p.hidden;
  const M one(1);
  GATEDRNN_FOR_EACH_ROW(b, p.rows) {
    const T* ws = p.workspace + b * 4 * H;
    const T* hprev = b < p.from_seq ? p.out_prev + b * H : p.h0 + b * H;
    T* dx = p.grad_x + b * 3 * H;
    T* dhh = p.grad_h + b * 3 * H;
    GATEDRNN_FOR_EACH_COL(j, H) {
      const M r = to_acc(ws[j]), z = to_acc(ws[H + j]), n = to_acc(ws[2 * H + j]),
              hn = to_acc(ws[3 * H + j]);
      const T hp_raw = hprev[j];
      const M hp = to_acc(hp_raw);
      M* dhz = p.dh_z + b * H + j;
      M d = to_acc(p.grad_output[b * H + j]) + *dhz;
      if (p.dh_mm) d += p.dh_mm[b * H + j];
      const M dn = d * (one - z) * (one - n * n);
      const M dz = d * (hp - n) * z * (one - z);
      const M dr = dn * hn * r * (one - r);
      dx[j] = from_acc<T>(dr);
      dx[H + j] = from_acc<T>(dz);
      dx[2 * H + j] = from_acc<T>(dn);
      dhh[j] = from_acc<T>(dr);
      dhh[H + j] = from_acc<T>(dz);
      dhh[2 * H + j] = from_acc<T>(dn * r);
      *dhz = d * z;
      p.h_prev_out[b * H + j] = hp_raw;
    }
  }
}

}  // namespace

template <typename T>
cudaError_t gru_forward_step(const GruForwardStepParams<T>& p, cudaStream_t stream) {
  return launch_step(gru_forward_step_kernel<T>, p, stream);
}

template <typename T>
cudaError_t gru_backward_step(const GruBackwardStepParams<T>& p, cudaStream_t stream) {
  return launch_step(gru_backward_step_kernel<T>, p, stream);
}

#define GATEDRNN_INSTANTIATE(T)                                                              \
  template cudaError_t gru_forward_step<T>(const GruForwardStepParams<T>&, cudaStream_t);    \
  template cudaError_t gru_backward_step<T>(const GruBackwardStepParams<T>&, cudaStream_t);
GATEDRNN_INSTANTIATE(float)
GATEDRNN_INSTANTIATE(double)
GATEDRNN_INSTANTIATE(__half)
GATEDRNN_INSTANTIATE(__nv_bfloat16)
#undef GATEDRNN_INSTANTIATE

}  // namespace kernels
}  // namespace gatedrnn
