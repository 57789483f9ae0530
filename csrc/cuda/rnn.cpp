// Elman RNN (tanh or relu) on CUDA: the cell's part of the time loops in recurrence.h.
// Same schemas and math as csrc/cpu/rnn.cpp; no workspace (the output alone
// differentiates tanh and relu), the input projection goes into the output.
#include <torch/library.h>

#include <string>
#include <tuple>

#include "../kernels/rnn_pointwise.h"
#include "recurrence.h"

namespace gatedrnn {
namespace cuda {
namespace {

struct Rnn {
  static constexpr kernels::Cell kKind = kernels::Cell::kRnn;
  static constexpr const char* kForward = "gatedrnn.rnn_forward";
  static constexpr const char* kBackward = "gatedrnn.rnn_backward";
  static constexpr int64_t kGates = 1;
  static constexpr int64_t kWorkspace = 0;
  static constexpr bool kCellState = false;
  static constexpr bool kSplitGateGrads = false;

  template <typename T>
  static cudaError_t forward_step(const ForwardStep<T>& s, cudaStream_t stream) {
    kernels::RnnForwardStepParams<T> p;
    p.rows = s.rows;
    p.hidden = s.hidden;
    p.relu = s.relu;
    p.output = s.output;
    p.x_gates = s.x_gates;
    p.x_ld = s.x_ld;
    p.hidden_gates = s.hidden_gates;
    p.b_ih = s.b_ih;
    p.b_hh = s.b_hh;
    p.h_state = s.h_state;
    return kernels::rnn_forward_step<T>(p, stream);
  }

  template <typename T>
  static cudaError_t backward_step(const BackwardStep<T>& s, cudaStream_t stream) {
    kernels::RnnBackwardStepParams<T> p;
    p.rows = s.rows;
    p.hidden = s.hidden;
    p.relu = s.relu;
    p.grad_output = s.grad_output;
    p.dh_state = s.grad_h;
    p.output = s.output;
    p.grad_gates = s.grad_x;
    p.out_prev = s.out_prev;
    p.h0 = s.h0;
    p.from_seq = s.from_seq;
    p.h_prev_out = s.h_prev_out;
    return kernels::rnn_backward_step<T>(p, stream);
  }
};

bool is_relu(const char* op, c10::string_view nonlinearity) {
  TORCH_CHECK_VALUE(nonlinearity == "tanh" || nonlinearity == "relu", op,
                    ": expected nonlinearity to be 'tanh' or 'relu', got '",
                    std::string(nonlinearity), "'");
  return nonlinearity == "relu";
}

std::tuple<at::Tensor, at::Tensor> rnn_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    c10::string_view nonlinearity, bool reverse, double grad_clip,
    const std::optional<at::Tensor>& reset) {
  const bool relu = is_relu(Rnn::kForward, nonlinearity);
  check_grad_clip(Rnn::kForward, grad_clip);  // carried for the backward (autograd)
  const ForwardResult r = recurrent_forward<Rnn>(
      {input, batch_sizes, h0, nullptr, w_ih, w_hh, b_ih, b_hh, std::nullopt, reverse,
       /*need_workspace=*/false, relu, &reset});
  return {r.output, r.h_n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
rnn_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
             const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
             const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
             c10::string_view nonlinearity, bool reverse, double grad_clip,
             const std::optional<at::Tensor>& reset, bool record_norms,
             std::array<bool, 3> output_mask) {
  const bool relu = is_relu(Rnn::kBackward, nonlinearity);
  check_grad_clip(Rnn::kBackward, grad_clip);
  const BackwardResult r = recurrent_backward<Rnn>(
      {grad_output, grad_h_n, nullptr, input, batch_sizes, h0, nullptr, w_ih, w_hh,
       std::nullopt, output, nullptr, reverse, relu, record_norms, nullptr, grad_clip,
       &reset, output_mask});
  return {r.grad_input, r.grad_h0,   r.grad_w_ih,  r.grad_w_hh,
          r.grad_b_ih,  r.grad_b_hh, r.step_norms};
}

}  // namespace

TORCH_LIBRARY_IMPL(gatedrnn, CUDA, m) {
  m.impl("rnn_forward", &rnn_forward);
  m.impl("rnn_backward", &rnn_backward);
}

}  // namespace cuda
}  // namespace gatedrnn
