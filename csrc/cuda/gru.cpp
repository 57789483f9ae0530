// GRU over one direction of a (possibly packed) sequence, on CUDA.
// Same schemas, math and workspace as csrc/cpu/gru.cpp: gates r, z, n;
// workspace row (4H) = activated r, z, n, then hn = W_hn h + b_hn.
//
// Forward:  ws[:, :3H] = x @ w_ih^T (one GEMM), then either the persistent
//           kernel (small batch; see kernels/persistent.h) or per step:
//           hg[:n] = h[:n] @ w_hh^T (cuBLAS) + the fused pointwise kernel.
// Backward: per step in reverse: the pointwise kernel (gate gradients of both
//           GEMM sides, dh * z, the gather of h_prev), then
//           dh[:n] += dgh rows @ w_hh; after the loop the input and weight
//           gradients are single GEMMs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "../kernels/gru_pointwise.h"
#include "../kernels/persistent.h"
#include "glue.h"

namespace gatedrnn {
namespace cuda {
namespace {

constexpr int64_t kGates = 3;
constexpr const char* kForward = "gatedrnn.gru_forward";
constexpr const char* kBackward = "gatedrnn.gru_backward";

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    bool reverse, bool need_workspace) {
  check_on_cuda(kForward, input);
  const RnnShapes sh = check_rnn_args(kForward, kGates, input, batch_sizes, h0, nullptr, w_ih,
                                      w_hh, b_ih, b_hh, std::nullopt, reverse);
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
  // The workspace, and for float/double the hoisted input projection in its first 3H
  // columns; without need_workspace (no backward will read it) only those columns, and
  // the kernels write no workspace.
  at::Tensor ws = at::empty({R, need_workspace ? 4 * H : acc == dtype ? 3 * H : 0}, opts);
  const InputGates xg = input_gates(x, wih, ws);

  at::Tensor h_n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, kForward, [&] {
    using T = typename KernelType<scalar_t>::type;
    kernels::PersistentPlan plan;
    if (use_persistent(kForward, s, H, nullptr, &kernels::gru_persistent_plan<T>, &plan)) {
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
      p.w_hh = ptr<T>(whh);
      p.b_ih = ptr<T>(bih);
      p.b_hh = ptr<T>(bhh);
      p.h0 = ptr<T>(h0c);
      p.x_gates = ptr<kernels::acc_t<T>>(xg.gates);
      p.x_ld = xg.ld;
      p.workspace = need_workspace ? ptr<T>(ws) : nullptr;
      p.output = ptr<T>(out);
      p.h_n = ptr<T>(h_n);
      if (persistent_ran(kForward, kernels::gru_persistent_forward<T>(p, plan, stream))) return;
    }

    using A = kernels::acc_t<T>;
    at::Tensor h_state = fresh_copy(h0, dtype);  // [N, H], becomes h_n
    at::Tensor hg = at::empty({N, kGates * H}, opts.dtype(acc));
    const at::Tensor whh_t = whh.t();
    T* wsp = ptr<T>(ws);
    T* outp = ptr<T>(out);
    for (int64_t k = 0; k < s.steps(); ++k) {
      const int64_t t = s.time_at(k), n = s.sizes[t], off = s.offsets[t];
      at::Tensor hg_n = hg.narrow(0, 0, n);
      mm_acc_out(hg_n, h_state.narrow(0, 0, n), whh_t);
      kernels::GruForwardStepParams<T> p;
      p.rows = n;
      p.hidden = H;
      p.workspace = need_workspace ? wsp + off * 4 * H : nullptr;
      p.x_gates = ptr<A>(xg.gates) + off * xg.ld;
      p.x_ld = xg.ld;
      p.hidden_gates = ptr<A>(hg);
      p.b_ih = ptr<T>(bih);
      p.b_hh = ptr<T>(bhh);
      p.h_state = ptr<T>(h_state);
      p.h_out = outp + off * H;
      C10_CUDA_CHECK(kernels::gru_forward_step<T>(p, stream));
    }
    h_n = h_state;
  });
  return {shaped_like_input(out, input), h_n, need_workspace ? ws : at::empty({0, 4 * H}, opts)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gru_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
             const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
             const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
             const at::Tensor& workspace, bool reverse) {
  check_on_cuda(kBackward, input);
  const RnnShapes sh = check_rnn_args(kBackward, kGates, input, batch_sizes, h0, nullptr, w_ih,
                                      w_hh, std::nullopt, std::nullopt, std::nullopt, reverse);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, N = s.batch, R = s.rows, I = sh.input_size;
  check_shape(kBackward, workspace, "workspace", {R, 4 * H}, "rows, 4*hidden_size");
  check_shape(kBackward, grad_output, "grad_output", output.sizes(), "the output's shape");
  check_shape(kBackward, grad_h_n, "grad_h_n", h0.sizes(), "h0's shape");
  check_same_dtype(kBackward, input, grad_output, "grad_output");
  check_same_dtype(kBackward, input, grad_h_n, "grad_h_n");
  check_same_dtype(kBackward, input, output, "output");
  check_same_dtype(kBackward, input, workspace, "workspace");
  TORCH_CHECK_VALUE(output.numel() == R * H, kBackward, ": expected output with ", R * H,
                    " elements (rows x ", H, "), got ", shape_str(output));
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto opts = input.options();
  const at::ScalarType dtype = input.scalar_type();
  const at::Tensor x = input.contiguous().view({R, I});
  const at::Tensor out = output.contiguous().view({R, H});
  const at::Tensor go = grad_output.contiguous().view({R, H});
  const at::Tensor ws = workspace.contiguous(), h0c = h0.contiguous();
  const at::Tensor whh = w_hh.contiguous(), wih = w_ih.contiguous();

  // dL/dh between steps, in the math dtype: dh_z + dh_mm (see GruBackwardStepParams).
  const at::ScalarType acc = acc_dtype(dtype);
  at::Tensor dh_z = fresh_copy(grad_h_n, acc);  // [N, H]
  at::Tensor dh_mm = at::zeros({N, H}, opts.dtype(acc));
  at::Tensor dgx = at::empty({R, kGates * H}, opts);
  at::Tensor dgh = at::empty({R, kGates * H}, opts);
  at::Tensor h_prev = at::empty({R, H}, opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, kBackward, [&] {
    using T = typename KernelType<scalar_t>::type;
    using A = kernels::acc_t<T>;
    const T* wsp = ptr<T>(ws);
    const T* gop = ptr<T>(go);
    const T* outp = ptr<T>(out);
    T* dgxp = ptr<T>(dgx);
    T* dghp = ptr<T>(dgh);
    T* hpp = ptr<T>(h_prev);
    for (int64_t k = s.steps() - 1; k >= 0; --k) {
      const int64_t t = s.time_at(k), n = s.sizes[t], off = s.offsets[t];
      const PrevStep prev = prev_step(s, k);
      kernels::GruBackwardStepParams<T> p;
      p.rows = n;
      p.hidden = H;
      p.grad_output = gop + off * H;
      p.dh_z = ptr<A>(dh_z);
      p.dh_mm = ptr<A>(dh_mm);
      p.workspace = wsp + off * 4 * H;
      p.out_prev = prev.from_seq > 0 ? outp + prev.offset * H : nullptr;
      p.h0 = ptr<T>(h0c);
      p.from_seq = prev.from_seq;
      p.h_prev_out = hpp + off * H;
      p.grad_x = dgxp + off * kGates * H;
      p.grad_h = dghp + off * kGates * H;
      C10_CUDA_CHECK(kernels::gru_backward_step<T>(p, stream));
      // dh_mm[:n] = dgh rows @ w_hh      [n, 3H] x [3H, H]
      at::Tensor dh_mm_n = dh_mm.narrow(0, 0, n);
      mm_acc_out(dh_mm_n, dgh.narrow(0, off, n), whh);
    }
  });

  at::Tensor grad_input = at::empty({R, I}, opts);
  at::Tensor grad_b_ih = at::empty({kGates * H}, opts);
  at::Tensor grad_b_hh = at::empty({kGates * H}, opts);
  at::mm_out(grad_input, dgx, wih);
  const at::Tensor grad_w_ih = weight_grad(dgx.t(), x);
  const at::Tensor grad_w_hh = weight_grad(dgh.t(), h_prev);
  at::sum_out(grad_b_ih, dgx, at::IntArrayRef(kDim0));
  at::sum_out(grad_b_hh, dgh, at::IntArrayRef(kDim0));
  return {shaped_like_input(grad_input, input), as_dtype(dh_z.add_(dh_mm), dtype), grad_w_ih,
          grad_w_hh, grad_b_ih, grad_b_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(gatedrnn, CUDA, m) {
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
}

}  // namespace cuda
}  // namespace gatedrnn
