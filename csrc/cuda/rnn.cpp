// Elman RNN (tanh or relu) over one direction of a (possibly packed) sequence,
// on CUDA. Same schemas and math as csrc/cpu/rnn.cpp; no workspace.
//
// Forward:  out = x @ w_ih^T (one GEMM, straight into the output), then either
//           the persistent kernel (small batch; see kernels/persistent.h) or per
//           step: hg[:n] = h[:n] @ w_hh^T (cuBLAS) + the pointwise kernel, which
//           overwrites the step's output rows with act(out + hg + biases).
// Backward: per step in reverse: the pointwise kernel (dgates, the gather of
//           h_prev), then dh[:n] = dgates rows @ w_hh; the input and weight
//           gradients are single GEMMs after the loop.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "../kernels/persistent.h"
#include "../kernels/rnn_pointwise.h"
#include "glue.h"

namespace gatedrnn {
namespace cuda {
namespace {

constexpr const char* kForward = "gatedrnn.rnn_forward";
constexpr const char* kBackward = "gatedrnn.rnn_backward";

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
    c10::string_view nonlinearity, bool reverse) {
  const bool relu = is_relu(kForward, nonlinearity);
  check_on_cuda(kForward, input);
  const RnnShapes sh = check_rnn_args(kForward, 1, input, batch_sizes, h0, nullptr, w_ih, w_hh,
                                      b_ih, b_hh, std::nullopt, reverse);
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, N = s.batch, R = s.rows;
  const auto opts = input.options();
  const at::ScalarType dtype = input.scalar_type();
  const at::Tensor x = input.contiguous().view({R, sh.input_size});
  const at::Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const at::Tensor bih = contiguous_or_undefined(b_ih), bhh = contiguous_or_undefined(b_hh);

  const at::ScalarType acc = acc_dtype(dtype);
  at::Tensor out = at::empty({R, H}, opts);
  // The hoisted input projection (into the output for float/double).
  const InputGates xg = input_gates(x, wih, out);

  at::Tensor h_n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, kForward, [&] {
    using T = typename KernelType<scalar_t>::type;
    kernels::PersistentPlan plan;
    if (use_persistent(kForward, s, H, nullptr, &kernels::rnn_persistent_plan<T>, &plan)) {
      const at::Tensor sched = device_schedule(s, is_packed(batch_sizes), input);
      const at::Tensor h0c = h0.contiguous();
      h_n = at::empty({N, H}, opts);
      kernels::PersistentParams<T> p;
      p.steps = s.steps();
      p.batch = N;
      p.hidden = H;
      p.sizes = sched.defined() ? sched.data_ptr<int64_t>() : nullptr;
      p.offsets = sched.defined() ? sched.data_ptr<int64_t>() + s.steps() : nullptr;
      p.reverse = reverse;
      p.relu = relu;
      p.w_hh = ptr<T>(whh);
      p.b_ih = ptr<T>(bih);
      p.b_hh = ptr<T>(bhh);
      p.h0 = ptr<T>(h0c);
      p.x_gates = ptr<kernels::acc_t<T>>(xg.gates);
      p.x_ld = xg.ld;
      p.output = ptr<T>(out);
      p.h_n = ptr<T>(h_n);
      if (persistent_ran(kForward, kernels::rnn_persistent_forward<T>(p, plan, stream))) return;
    }

    using A = kernels::acc_t<T>;
    at::Tensor h_state = fresh_copy(h0, dtype);  // [N, H], becomes h_n
    at::Tensor hg = at::empty({N, H}, opts.dtype(acc));
    const at::Tensor whh_t = whh.t();
    T* outp = ptr<T>(out);
    for (int64_t k = 0; k < s.steps(); ++k) {
      const int64_t t = s.time_at(k), n = s.sizes[t], off = s.offsets[t];
      at::Tensor hg_n = hg.narrow(0, 0, n);
      mm_acc_out(hg_n, h_state.narrow(0, 0, n), whh_t);
      kernels::RnnForwardStepParams<T> p;
      p.rows = n;
      p.hidden = H;
      p.relu = relu;
      p.output = outp + off * H;
      p.x_gates = ptr<A>(xg.gates) + off * xg.ld;
      p.x_ld = xg.ld;
      p.hidden_gates = ptr<A>(hg);
      p.b_ih = ptr<T>(bih);
      p.b_hh = ptr<T>(bhh);
      p.h_state = ptr<T>(h_state);
      C10_CUDA_CHECK(kernels::rnn_forward_step<T>(p, stream));
    }
    h_n = h_state;
  });
  return {shaped_like_input(out, input), h_n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
rnn_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
             const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
             const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
             c10::string_view nonlinearity, bool reverse) {
  const bool relu = is_relu(kBackward, nonlinearity);
  check_on_cuda(kBackward, input);
  const RnnShapes sh = check_rnn_args(kBackward, 1, input, batch_sizes, h0, nullptr, w_ih, w_hh,
                                      std::nullopt, std::nullopt, std::nullopt, reverse);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, R = s.rows, I = sh.input_size;
  check_shape(kBackward, grad_output, "grad_output", output.sizes(), "the output's shape");
  check_shape(kBackward, grad_h_n, "grad_h_n", h0.sizes(), "h0's shape");
  check_same_dtype(kBackward, input, grad_output, "grad_output");
  check_same_dtype(kBackward, input, grad_h_n, "grad_h_n");
  check_same_dtype(kBackward, input, output, "output");
  TORCH_CHECK_VALUE(output.numel() == R * H, kBackward, ": expected output with ", R * H,
                    " elements (rows x ", H, "), got ", shape_str(output));
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto opts = input.options();
  const at::ScalarType dtype = input.scalar_type();
  const at::Tensor x = input.contiguous().view({R, I});
  const at::Tensor out = output.contiguous().view({R, H});
  const at::Tensor go = grad_output.contiguous().view({R, H});
  const at::Tensor h0c = h0.contiguous();
  const at::Tensor whh = w_hh.contiguous(), wih = w_ih.contiguous();

  at::Tensor dh_state = fresh_copy(grad_h_n, acc_dtype(dtype));  // [N, H] math dtype
  at::Tensor dgates = at::empty({R, H}, opts);
  at::Tensor h_prev = at::empty({R, H}, opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, kBackward, [&] {
    using T = typename KernelType<scalar_t>::type;
    using A = kernels::acc_t<T>;
    const T* gop = ptr<T>(go);
    const T* outp = ptr<T>(out);
    T* dgp = ptr<T>(dgates);
    T* hpp = ptr<T>(h_prev);
    for (int64_t k = s.steps() - 1; k >= 0; --k) {
      const int64_t t = s.time_at(k), n = s.sizes[t], off = s.offsets[t];
      const PrevStep prev = prev_step(s, k);
      kernels::RnnBackwardStepParams<T> p;
      p.rows = n;
      p.hidden = H;
      p.relu = relu;
      p.grad_output = gop + off * H;
      p.dh_state = ptr<A>(dh_state);
      p.output = outp + off * H;
      p.grad_gates = dgp + off * H;
      p.out_prev = prev.from_seq > 0 ? outp + prev.offset * H : nullptr;
      p.h0 = ptr<T>(h0c);
      p.from_seq = prev.from_seq;
      p.h_prev_out = hpp + off * H;
      C10_CUDA_CHECK(kernels::rnn_backward_step<T>(p, stream));
      // dh[:n] = dgates rows @ w_hh      [n, H] x [H, H]
      at::Tensor dh_n = dh_state.narrow(0, 0, n);
      mm_acc_out(dh_n, dgates.narrow(0, off, n), whh);
    }
  });

  at::Tensor grad_input = at::empty({R, I}, opts);
  at::Tensor grad_b_ih = at::empty({H}, opts);
  at::mm_out(grad_input, dgates, wih);
  const at::Tensor grad_w_ih = weight_grad(dgates.t(), x);
  const at::Tensor grad_w_hh = weight_grad(dgates.t(), h_prev);
  at::sum_out(grad_b_ih, dgates, at::IntArrayRef(kDim0));
  at::Tensor grad_b_hh = grad_b_ih.clone();
  return {shaped_like_input(grad_input, input), as_dtype(dh_state, dtype), grad_w_ih, grad_w_hh,
          grad_b_ih, grad_b_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(gatedrnn, CUDA, m) {
  m.impl("rnn_forward", &rnn_forward);
  m.impl("rnn_backward", &rnn_backward);
}

}  // namespace cuda
}  // namespace gatedrnn
