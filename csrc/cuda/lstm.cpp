// LSTM on CUDA: the cell's part of the time loops in recurrence.h. Same schemas, math
// and workspace as csrc/cpu/lstm.cpp: gates i, f, g, o; workspace row (5H) = activated
// i, f, g, o, then c; with w_hr, h = W_hr (o * tanh c).
#include <torch/library.h>

#include <tuple>

#include "../kernels/lstm_pointwise.h"
#include "recurrence.h"

namespace gatedrnn {
namespace cuda {
namespace {

struct Lstm {
  static constexpr kernels::Cell kKind = kernels::Cell::kLstm;
  static constexpr const char* kForward = "gatedrnn.lstm_forward";
  static constexpr const char* kBackward = "gatedrnn.lstm_backward";
  static constexpr int64_t kGates = 4;
  static constexpr int64_t kWorkspace = 5;
  static constexpr bool kCellState = true;
  static constexpr bool kSplitGateGrads = false;

  template <typename T>
  static cudaError_t forward_step(const ForwardStep<T>& s, cudaStream_t stream) {
    kernels::LstmForwardStepParams<T> p;
    p.rows = s.rows;
    p.hidden = s.hidden;
    p.workspace = s.workspace;
    p.x_gates = s.x_gates;
    p.x_ld = s.x_ld;
    p.hidden_gates = s.hidden_gates;
    p.b_ih = s.b_ih;
    p.b_hh = s.b_hh;
    p.c_state = s.c_state;
    p.h_out = s.output;
    p.h_out_ld = s.hidden;
    p.h_state = s.h_state;
    return kernels::lstm_forward_step<T>(p, stream);
  }

  template <typename T>
  static cudaError_t backward_step(const BackwardStep<T>& s, cudaStream_t stream) {
    kernels::LstmBackwardStepParams<T> p;
    p.rows = s.rows;
    p.hidden = s.hidden;
    p.state = s.state;
    p.grad_out = s.grad_output;
    p.grad_h = s.grad_h;
    p.workspace = s.workspace;
    p.workspace_prev = s.workspace_prev;
    p.c0 = s.c0;
    p.from_seq = s.from_seq;
    p.dc_state = s.dc_state;
    p.grad_gates = s.grad_x;
    p.out_prev = s.out_prev;
    p.h0 = s.h0;
    p.h_prev_out = s.h_prev_out;
    return kernels::lstm_backward_step<T>(p, stream);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    bool reverse, bool need_workspace, const std::optional<at::Tensor>& reset) {
  const ForwardResult r = recurrent_forward<Lstm>(
      {input, batch_sizes, h0, &c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, need_workspace,
       /*relu=*/false, &reset});
  return {r.output, r.h_n, r.c_n, r.workspace};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
lstm_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
              const at::Tensor& grad_c_n, const at::Tensor& input,
              const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
              const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
              const std::optional<at::Tensor>& w_hr, const at::Tensor& output,
              const at::Tensor& workspace, bool reverse,
              const std::optional<at::Tensor>& grad_cell_states,
              const std::optional<at::Tensor>& reset, bool record_norms,
              std::array<bool, 3> output_mask) {
  const BackwardResult r = recurrent_backward<Lstm>(
      {grad_output, grad_h_n, &grad_c_n, input, batch_sizes, h0, &c0, w_ih, w_hh, w_hr, output,
       &workspace, reverse, /*relu=*/false, record_norms, &grad_cell_states,
       /*grad_clip=*/0, &reset, output_mask});
  return {r.grad_input, r.grad_h0,   r.grad_c0,   r.grad_w_ih,  r.grad_w_hh,
          r.grad_b_ih,  r.grad_b_hh, r.grad_w_hr, r.step_norms};
}

}  // namespace

TORCH_LIBRARY_IMPL(gatedrnn, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
}

}  // namespace cuda
}  // namespace gatedrnn
