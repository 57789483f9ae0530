// GRU on CUDA: the cell's part of the time loops in recurrence.h. Same schemas, math and
// workspace as csrc/cpu/gru.cpp: gates r, z, n; workspace row (4H) = activated r, z, n,
// then hn = W_hn h + b_hn. r multiplies W_hn h, so the gate gradients of the two GEMM
// sides differ (kSplitGateGrads).
#include <torch/library.h>

#include <tuple>

#include "../kernels/gru_pointwise.h"
#include "recurrence.h"

namespace gatedrnn {
namespace cuda {
namespace {

struct Gru {
  static constexpr kernels::Cell kKind = kernels::Cell::kGru;
  static constexpr const char* kForward = "gatedrnn.gru_forward";
  static constexpr const char* kBackward = "gatedrnn.gru_backward";
  static constexpr int64_t kGates = 3;
  static constexpr int64_t kWorkspace = 4;
  static constexpr bool kCellState = false;
  static constexpr bool kSplitGateGrads = true;

  template <typename T>
  static cudaError_t forward_step(const ForwardStep<T>& s, cudaStream_t stream) {
    kernels::GruForwardStepParams<T> p;
    p.rows = s.rows;
    p.hidden = s.hidden;
    p.workspace = s.workspace;
    p.x_gates = s.x_gates;
    p.x_ld = s.x_ld;
    p.hidden_gates = s.hidden_gates;
    p.b_ih = s.b_ih;
    p.b_hh = s.b_hh;
    p.h_state = s.h_state;
    p.h_out = s.output;
    return kernels::gru_forward_step<T>(p, stream);
  }

  template <typename T>
  static cudaError_t backward_step(const BackwardStep<T>& s, cudaStream_t stream) {
    kernels::GruBackwardStepParams<T> p;
    p.rows = s.rows;
    p.hidden = s.hidden;
    p.grad_output = s.grad_output;
    p.dh_z = s.grad_h;
    p.dh_mm = s.grad_h_mm;
    p.workspace = s.workspace;
    p.out_prev = s.out_prev;
    p.h0 = s.h0;
    p.from_seq = s.from_seq;
    p.h_prev_out = s.h_prev_out;
    p.grad_x = s.grad_x;
    p.grad_h = s.grad_h_gates;
    return kernels::gru_backward_step<T>(p, stream);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    bool reverse, bool need_workspace, const std::optional<at::Tensor>& reset) {
  const ForwardResult r = recurrent_forward<Gru>(
      {input, batch_sizes, h0, nullptr, w_ih, w_hh, b_ih, b_hh, std::nullopt, reverse,
       need_workspace, /*relu=*/false, &reset});
  return {r.output, r.h_n, r.workspace};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gru_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
             const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
             const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
             const at::Tensor& workspace, bool reverse,
             const std::optional<at::Tensor>& reset, bool record_norms,
             std::array<bool, 3> output_mask) {
  const BackwardResult r = recurrent_backward<Gru>(
      {grad_output, grad_h_n, nullptr, input, batch_sizes, h0, nullptr, w_ih, w_hh,
       std::nullopt, output, &workspace, reverse, /*relu=*/false, record_norms, nullptr,
       /*grad_clip=*/0, &reset, output_mask});
  return {r.grad_input, r.grad_h0,   r.grad_w_ih,  r.grad_w_hh,
          r.grad_b_ih,  r.grad_b_hh, r.step_norms};
}

}  // namespace

TORCH_LIBRARY_IMPL(gatedrnn, CUDA, m) {
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
}

}  // namespace cuda
}  // namespace gatedrnn
