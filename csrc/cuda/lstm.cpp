// LSTM over one direction of a (possibly packed) sequence, on CUDA.
// Same schemas, math and workspace as csrc/cpu/lstm.cpp: gates i, f, g, o;
// workspace row (5H) = activated i, f, g, o, then c; with w_hr, h = W_hr (o * tanh c).
//
// Forward:  ws[:, :4H] = x @ w_ih^T (one GEMM), then either the persistent
//           kernel (small batch, no projection; see kernels/persistent.h) or per
//           step: hg[:n] = h[:n] @ w_hh^T (cuBLAS) + the fused pointwise kernel
//           (+ with w_hr: out rows = hp[:n] @ w_hr^T, h[:n] = out rows).
// Backward: per step in reverse: the pointwise kernel (gate gradients, dc, and
//           the gather of h_prev for the weight gradient), then
//           dh[:n] = dgates @ w_hh; after the loop the input and weight
//           gradients are single GEMMs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "../kernels/lstm_pointwise.h"
#include "../kernels/persistent.h"
#include "glue.h"

namespace gatedrnn {
namespace cuda {
namespace {

constexpr int64_t kGates = 4;
constexpr const char* kForward = "gatedrnn.lstm_forward";
constexpr const char* kBackward = "gatedrnn.lstm_backward";

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    bool reverse, bool need_workspace) {
  check_on_cuda(kForward, input);
  const RnnShapes sh = check_rnn_args(kForward, kGates, input, batch_sizes, h0, &c0, w_ih,
                                      w_hh, b_ih, b_hh, w_hr, reverse);
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, P = sh.state_size, N = s.batch, R = s.rows;
  const auto opts = input.options();
  const at::ScalarType dtype = input.scalar_type();
  const at::Tensor x = input.contiguous().view({R, sh.input_size});
  const at::Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const at::Tensor whr = contiguous_or_undefined(w_hr);
  const at::Tensor bih = contiguous_or_undefined(b_ih), bhh = contiguous_or_undefined(b_hh);
  const bool proj = whr.defined();

  const at::ScalarType acc = acc_dtype(dtype);
  at::Tensor out = at::empty({R, P}, opts);
  // The workspace, and for float/double the hoisted input projection in its first 4H
  // columns; without need_workspace (no backward will read it) only those columns, and
  // the kernels write no workspace.
  at::Tensor ws = at::empty({R, need_workspace ? 5 * H : acc == dtype ? 4 * H : 0}, opts);
  const InputGates xg = input_gates(x, wih, ws);

  at::Tensor h_n, c_n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, kForward, [&] {
    using T = typename KernelType<scalar_t>::type;
    kernels::PersistentPlan plan;
    if (use_persistent(kForward, s, H, proj ? "LSTM with projection (w_hr)" : nullptr,
                       &kernels::lstm_persistent_plan<T>, &plan)) {
      const at::Tensor sched = device_schedule(s, is_packed(batch_sizes), input);
      const at::Tensor h0c = h0.contiguous(), c0c = c0.contiguous();
      h_n = at::empty({N, H}, opts);
      c_n = at::empty({N, H}, opts);
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
      p.c0 = ptr<T>(c0c);
      p.x_gates = ptr<kernels::acc_t<T>>(xg.gates);
      p.x_ld = xg.ld;
      p.workspace = need_workspace ? ptr<T>(ws) : nullptr;
      p.output = ptr<T>(out);
      p.h_n = ptr<T>(h_n);
      p.c_n = ptr<T>(c_n);
      if (persistent_ran(kForward, kernels::lstm_persistent_forward<T>(p, plan, stream))) return;
    }

    // Per-step path. Recurrent state: h [N, P] in the op's dtype (it feeds the
    // GEMM), c [N, H] in the math type (fp32 for half types).
    using A = kernels::acc_t<T>;
    at::Tensor h_state = fresh_copy(h0, dtype);
    at::Tensor c_state = fresh_copy(c0, acc);
    at::Tensor hg = at::empty({N, kGates * H}, opts.dtype(acc));
    at::Tensor hp = proj ? at::empty({N, H}, opts) : at::Tensor();
    const at::Tensor whh_t = whh.t();
    const at::Tensor whr_t = proj ? whr.t() : at::Tensor();
    T* wsp = ptr<T>(ws);
    T* outp = ptr<T>(out);
    for (int64_t k = 0; k < s.steps(); ++k) {
      const int64_t t = s.time_at(k), n = s.sizes[t], off = s.offsets[t];
      at::Tensor hg_n = hg.narrow(0, 0, n);
      mm_acc_out(hg_n, h_state.narrow(0, 0, n), whh_t);
      kernels::LstmForwardStepParams<T> p;
      p.rows = n;
      p.hidden = H;
      p.workspace = need_workspace ? wsp + off * 5 * H : nullptr;
      p.x_gates = ptr<A>(xg.gates) + off * xg.ld;
      p.x_ld = xg.ld;
      p.hidden_gates = ptr<A>(hg);
      p.b_ih = ptr<T>(bih);
      p.b_hh = ptr<T>(bhh);
      p.c_state = ptr<A>(c_state);
      p.h_out = proj ? ptr<T>(hp) : outp + off * P;
      p.h_out_ld = H;
      p.h_state = proj ? nullptr : ptr<T>(h_state);
      C10_CUDA_CHECK(kernels::lstm_forward_step<T>(p, stream));
      if (proj) {
        at::Tensor out_n = out.narrow(0, off, n);
        at::mm_out(out_n, hp.narrow(0, 0, n), whr_t);
        h_state.narrow(0, 0, n).copy_(out_n);
      }
    }
    h_n = h_state;
    c_n = as_dtype(c_state, dtype);
  });
  return {shaped_like_input(out, input), h_n, c_n,
          need_workspace ? ws : at::empty({0, 5 * H}, opts)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
lstm_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
              const at::Tensor& grad_c_n, const at::Tensor& input,
              const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
              const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
              const std::optional<at::Tensor>& w_hr, const at::Tensor& output,
              const at::Tensor& workspace, bool reverse) {
  check_on_cuda(kBackward, input);
  const RnnShapes sh = check_rnn_args(kBackward, kGates, input, batch_sizes, h0, &c0, w_ih,
                                      w_hh, std::nullopt, std::nullopt, w_hr, reverse);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, P = sh.state_size, N = s.batch, R = s.rows;
  const int64_t I = sh.input_size;
  check_shape(kBackward, workspace, "workspace", {R, 5 * H}, "rows, 5*hidden_size");
  check_shape(kBackward, grad_output, "grad_output", output.sizes(), "the output's shape");
  check_shape(kBackward, grad_h_n, "grad_h_n", h0.sizes(), "h0's shape");
  check_shape(kBackward, grad_c_n, "grad_c_n", c0.sizes(), "c0's shape");
  check_same_dtype(kBackward, input, grad_output, "grad_output");
  check_same_dtype(kBackward, input, grad_h_n, "grad_h_n");
  check_same_dtype(kBackward, input, grad_c_n, "grad_c_n");
  check_same_dtype(kBackward, input, output, "output");
  check_same_dtype(kBackward, input, workspace, "workspace");
  TORCH_CHECK_VALUE(output.numel() == R * P, kBackward, ": expected output with ", R * P,
                    " elements (rows x ", P, "), got ", shape_str(output));
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto opts = input.options();
  const at::ScalarType dtype = input.scalar_type();
  const at::ScalarType acc = acc_dtype(dtype);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const at::Tensor whr = proj ? w_hr->contiguous() : at::Tensor();
  const at::Tensor whh = w_hh.contiguous(), wih = w_ih.contiguous();
  const at::Tensor ws = workspace.contiguous();
  const at::Tensor go = grad_output.contiguous().view({R, P});
  const at::Tensor out = output.contiguous().view({R, P});
  const at::Tensor x = input.contiguous().view({R, I});
  const at::Tensor h0c = h0.contiguous(), c0c = c0.contiguous();

  // dL/dh and dL/dc between steps in the math dtype (fp32 for half types).
  at::Tensor dh_state = fresh_copy(grad_h_n, acc);  // [N, P]
  at::Tensor dc_state = fresh_copy(grad_c_n, acc);  // [N, H]
  at::Tensor dgates = at::empty({R, kGates * H}, opts);
  at::Tensor h_prev = at::empty({R, P}, opts);
  at::Tensor dout = proj ? at::empty({R, P}, opts) : at::Tensor();  // total dL/d(out rows)
  at::Tensor dhp = proj ? at::empty({N, H}, opts.dtype(acc)) : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, kBackward, [&] {
    using T = typename KernelType<scalar_t>::type;
    using A = kernels::acc_t<T>;
    const T* wsp = ptr<T>(ws);
    const T* gop = ptr<T>(go);
    const T* outp = ptr<T>(out);
    T* dgp = ptr<T>(dgates);
    T* hpp = ptr<T>(h_prev);
    for (int64_t k = s.steps() - 1; k >= 0; --k) {
      const int64_t t = s.time_at(k), n = s.sizes[t], off = s.offsets[t];
      const PrevStep prev = prev_step(s, k);
      at::Tensor dh_n = dh_state.narrow(0, 0, n);
      kernels::LstmBackwardStepParams<T> p;
      p.rows = n;
      p.hidden = H;
      p.state = P;
      if (proj) {
        // dout rows = grad_output rows + dh; dhp = dout rows @ w_hr    [n, P] x [P, H]
        at::Tensor dout_n = dout.narrow(0, off, n);
        at::add_out(dout_n, go.narrow(0, off, n), dh_n);
        at::Tensor dhp_n = dhp.narrow(0, 0, n);
        mm_acc_out(dhp_n, dout_n, whr);
        p.grad_out = nullptr;
        p.grad_h = ptr<A>(dhp);
      } else {
        p.grad_out = gop + off * P;
        p.grad_h = ptr<A>(dh_state);
      }
      p.workspace = wsp + off * 5 * H;
      p.workspace_prev = prev.from_seq > 0 ? wsp + prev.offset * 5 * H : nullptr;
      p.c0 = ptr<T>(c0c);
      p.from_seq = prev.from_seq;
      p.dc_state = ptr<A>(dc_state);
      p.grad_gates = dgp + off * kGates * H;
      p.out_prev = prev.from_seq > 0 ? outp + prev.offset * P : nullptr;
      p.h0 = ptr<T>(h0c);
      p.h_prev_out = hpp + off * P;
      C10_CUDA_CHECK(kernels::lstm_backward_step<T>(p, stream));
      // dh[:n] = dgates rows @ w_hh      [n, 4H] x [4H, P]
      mm_acc_out(dh_n, dgates.narrow(0, off, n), whh);
    }
  });

  // The large GEMMs after the loop, into preallocated outputs.
  at::Tensor grad_input = at::empty({R, I}, opts);
  at::Tensor grad_b_ih = at::empty({kGates * H}, opts);
  at::mm_out(grad_input, dgates, wih);
  const at::Tensor grad_w_ih = weight_grad(dgates.t(), x);
  const at::Tensor grad_w_hh = weight_grad(dgates.t(), h_prev);
  at::sum_out(grad_b_ih, dgates, at::IntArrayRef(kDim0));
  at::Tensor grad_b_hh = grad_b_ih.clone();
  at::Tensor grad_w_hr;
  if (proj) {
    // hp = o * tanh(c), recomputed from the workspace rather than stored.
    const at::Tensor o = ws.narrow(1, 3 * H, H), c = ws.narrow(1, 4 * H, H);
    grad_w_hr = weight_grad(dout.t(), o * c.tanh());
  } else {
    grad_w_hr = at::empty({0}, opts);
  }
  return {shaped_like_input(grad_input, input), as_dtype(dh_state, dtype),
          as_dtype(dc_state, dtype),
          grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(gatedrnn, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
}

}  // namespace cuda
}  // namespace gatedrnn
