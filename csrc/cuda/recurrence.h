#pragma once
// The CUDA time loops of every cell, forward and backward, over one direction of a
// (possibly packed) sequence: what csrc/cpu/recurrence.h is to the CPU cells. A cell
// (csrc/cuda/<cell>.cpp) gives a traits struct and its op signatures; everything else
// (checks, device guard, stream, buffers, the hoisted input projection, the choice of
// the persistent kernel, the per-step GEMMs, the large GEMMs after the backward loop)
// is here, once.
//
//   struct Cell {
//     static constexpr kernels::Cell kKind;          // for the persistent kernel
//     static constexpr const char* kForward;         // op names, for messages
//     static constexpr const char* kBackward;
//     static constexpr int64_t kGates;               // G: gate blocks of w_ih and w_hh
//     static constexpr int64_t kWorkspace;           // workspace columns / H (0: none)
//     static constexpr bool kCellState;              // LSTM: c0, c_n, dL/dc
//     static constexpr bool kSplitGateGrads;         // GRU: x-side and h-side gate grads
//                                                    // differ (r multiplies W_hn h)
//     template <typename T>
//     static cudaError_t forward_step(const ForwardStep<T>&, cudaStream_t);
//     template <typename T>
//     static cudaError_t backward_step(const BackwardStep<T>&, cudaStream_t);
//   };
//
// Forward:  the input projection x @ w_ih^T of all rows in one GEMM (into the
//           workspace's first G*H columns, or the output for the RNN, in float/double;
//           its own fp32 buffer for the half types), then either the persistent kernel
//           (small batch, no projection; kernels/persistent.h) or per step:
//           hg[:n] = h[:n] @ w_hh^T (cuBLAS) and the cell's fused pointwise kernel
//           (LSTM with w_hr: then out rows = hp[:n] @ w_hr^T, h[:n] = out rows).
// Backward: per step in reverse: (with w_hr: dout rows = grad_output rows + dh,
//           dhp = dout rows @ w_hr), the cell's pointwise kernel (gate gradients, and the
//           gather of h_prev for the weight gradient), then dh[:n] = dgates_h rows @ w_hh;
//           after the loop the input, weight and bias gradients are single GEMMs and sums.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <array>

#include "glue.h"

namespace gatedrnn {
namespace cuda {

// Per-step resets (the ops' reset argument, registration.cpp): [R] bool flags on the CPU,
// checked as the CPU ops check them, copied to the device for the masks of the steps;
// undefined where there are none.
inline at::Tensor device_resets(const char* op, const std::optional<at::Tensor>* reset,
                                const Schedule& s, const at::Tensor& input) {
  if (reset == nullptr || !reset->has_value() || !(*reset)->defined()) return {};
  const at::Tensor& r = **reset;
  TORCH_CHECK_VALUE(r.scalar_type() == at::kBool && r.dim() == 1 && r.size(0) == s.rows &&
                        r.device().is_cpu(),
                    op, ": expected reset to be a 1-D bool CPU tensor with a flag per input row (",
                    s.rows, "), got ", shape_str(r), " ", r.scalar_type(), " on ", r.device());
  return r.to(input.device());
}

// The flags of step k's first n rows as an [n, 1] mask.
inline at::Tensor step_mask(const at::Tensor& resets, const Schedule& s, int64_t k, int64_t n) {
  return resets.narrow(0, s.offsets[s.time_at(k)], n).unsqueeze(1);
}

// The backward: rows of x (their first n) flagged in mask give what they hold to acc, and
// keep 0 (the gradient w.r.t. a state that restarted, which is the initial state's).
inline void move_masked_rows(const at::Tensor& mask, at::Tensor& x, at::Tensor& acc) {
  const int64_t n = mask.size(0);
  at::Tensor rows = x.narrow(0, 0, n);
  acc.narrow(0, 0, n).add_(rows * mask);
  rows.masked_fill_(mask, 0);
}

// One step of the per-step forward path, in the cell-independent form the driver
// fills; each cell copies what it needs into its kernel's params. Pointers are this
// step's first row; a step has `rows` live rows.
template <typename T>
struct ForwardStep {
  using A = kernels::acc_t<T>;
  int64_t rows = 0;               // n
  int64_t hidden = 0;             // H
  bool relu = false;              // RNN
  T* workspace = nullptr;         // [n, kWorkspace*H] or null (no backward will read it)
  const A* x_gates = nullptr;     // [n, x_ld] x @ w_ih^T
  int64_t x_ld = 0;
  const A* hidden_gates = nullptr;  // [n, G*H] h_prev @ w_hh^T
  const T* b_ih = nullptr;        // [G*H] or null
  const T* b_hh = nullptr;        // [G*H] or null
  A* c_state = nullptr;           // [n, H] LSTM cell state, updated in place
  T* output = nullptr;            // [n, H] the output rows (LSTM with w_hr: o * tanh c,
                                  // before the projection)
  T* h_state = nullptr;           // [n, H] in: h_prev, out: h; null with w_hr (the
                                  // driver copies the projected rows)
};

// One step of the backward loop, before dh_prev = dgates_h @ w_hh.
template <typename T>
struct BackwardStep {
  using A = kernels::acc_t<T>;
  int64_t rows = 0;               // n
  int64_t hidden = 0;             // H
  int64_t state = 0;              // P: proj_size with w_hr, else H
  bool relu = false;              // RNN
  const T* grad_output = nullptr; // [n, H] rows of dL/doutput; null with w_hr (in grad_h)
  A* grad_h = nullptr;            // [n, H] dL/dh from later steps (GRU: the part that
                                  // bypasses w_hh, rewritten by the kernel)
  const A* grad_h_mm = nullptr;   // [n, H] GRU: the part through w_hh
  A* dc_state = nullptr;          // [n, H] LSTM: in dL/dc, out dL/dc_prev
  const T* output = nullptr;      // [n, H] this step's output rows (RNN)
  const T* workspace = nullptr;   // [n, kWorkspace*H] this step's rows
  // The state the step started from: row b < from_seq continues its sequence (the
  // previous processed step's rows), the others start from h0 (and c0).
  const T* workspace_prev = nullptr;  // [from_seq, kWorkspace*H] or null
  const T* out_prev = nullptr;    // [from_seq, P] or null
  int64_t from_seq = 0;
  const T* h0 = nullptr;          // [N, P]
  const T* c0 = nullptr;          // [N, H] LSTM
  T* h_prev_out = nullptr;        // [n, P] out: the state each row started from
  T* grad_x = nullptr;            // [n, G*H] out: dL/d(x-side pre-activations)
  T* grad_h_gates = nullptr;      // [n, G*H] out: dL/d(h-side pre-activations) (GRU;
                                  // the same as grad_x for the other cells)
};

// The forward op's arguments; c0 and w_hr for the LSTM only.
struct ForwardArgs {
  const at::Tensor& input;
  const std::optional<at::Tensor>& batch_sizes;
  const at::Tensor& h0;
  const at::Tensor* c0;
  const at::Tensor& w_ih;
  const at::Tensor& w_hh;
  const std::optional<at::Tensor>& b_ih;
  const std::optional<at::Tensor>& b_hh;
  const std::optional<at::Tensor>& w_hr;
  bool reverse;
  bool need_workspace;
  bool relu;
  const std::optional<at::Tensor>* reset = nullptr;  // per-step resets, or none
};

struct ForwardResult {
  at::Tensor output, h_n, c_n, workspace;  // c_n: LSTM; workspace: not for the RNN
};

template <class Cell>
ForwardResult recurrent_forward(const ForwardArgs& a) {
  constexpr int64_t G = Cell::kGates, W = Cell::kWorkspace;
  const char* op = Cell::kForward;
  check_on_cuda(op, a.input);
  const RnnShapes sh = check_rnn_args(op, G, a.input, a.batch_sizes, a.h0, a.c0, a.w_ih,
                                      a.w_hh, a.b_ih, a.b_hh, a.w_hr, a.reverse);
  const c10::cuda::CUDAGuard guard(a.input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, P = sh.state_size, N = s.batch, R = s.rows;
  const auto opts = a.input.options();
  const at::ScalarType dtype = a.input.scalar_type(), acc = acc_dtype(dtype);
  const at::Tensor x = a.input.contiguous().view({R, sh.input_size});
  const at::Tensor wih = a.w_ih.contiguous(), whh = a.w_hh.contiguous();
  const at::Tensor whr = contiguous_or_undefined(a.w_hr);
  const at::Tensor bih = contiguous_or_undefined(a.b_ih), bhh = contiguous_or_undefined(a.b_hh);
  const bool proj = whr.defined();
  const at::Tensor resets = device_resets(op, a.reset, s, a.input);

  ForwardResult r;
  r.output = at::empty({R, P}, opts);
  // The workspace, and for float/double the hoisted input projection in its first G*H
  // columns; without need_workspace (no backward will read it) only those columns, and
  // the kernels write no workspace. The RNN has none: its projection goes into the output.
  const bool write_ws = W > 0 && a.need_workspace;
  if (W > 0) r.workspace = at::empty({R, write_ws ? W * H : acc == dtype ? G * H : 0}, opts);
  const InputGates xg = input_gates(x, wih, W > 0 ? r.workspace : r.output);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, Cell::kForward, [&] {
    using T = typename KernelType<scalar_t>::type;
    using A = kernels::acc_t<T>;
    kernels::PersistentPlan plan;
    if (use_persistent(op, s, H,
                       proj ? "LSTM with projection (w_hr)"
                            : resets.defined() ? "per-step resets (reset)" : nullptr,
                       &kernels::persistent_plan<Cell::kKind, T>, &plan)) {
      const at::Tensor sched = device_schedule(s, is_packed(a.batch_sizes), a.input);
      const at::Tensor h0c = a.h0.contiguous();
      const at::Tensor c0c = Cell::kCellState ? a.c0->contiguous() : at::Tensor();
      r.h_n = at::empty({N, H}, opts);
      if (Cell::kCellState) r.c_n = at::empty({N, H}, opts);
      kernels::PersistentParams<T> p;
      p.steps = s.steps();
      p.batch = N;
      p.hidden = H;
      p.sizes = sched.defined() ? sched.data_ptr<int64_t>() : nullptr;
      p.offsets = sched.defined() ? sched.data_ptr<int64_t>() + s.steps() : nullptr;
      p.reverse = a.reverse;
      p.relu = a.relu;
      p.w_hh = ptr<T>(whh);
      p.b_ih = ptr<T>(bih);
      p.b_hh = ptr<T>(bhh);
      p.h0 = ptr<T>(h0c);
      p.c0 = ptr<T>(c0c);
      p.x_gates = ptr<A>(xg.gates);
      p.x_ld = xg.ld;
      p.workspace = write_ws ? ptr<T>(r.workspace) : nullptr;
      p.output = ptr<T>(r.output);
      p.h_n = ptr<T>(r.h_n);
      p.c_n = ptr<T>(r.c_n);
      if (persistent_ran(op, kernels::persistent_forward<Cell::kKind, T>(p, plan, stream)))
        return;
    }

    // Per-step path. Recurrent state: h [N, P] in the op's dtype (it feeds the GEMM),
    // c [N, H] in the math type (fp32 for the half types).
    at::Tensor h_state = fresh_copy(a.h0, dtype);
    at::Tensor c_state = Cell::kCellState ? fresh_copy(*a.c0, acc) : at::Tensor();
    at::Tensor hg = at::empty({N, G * H}, opts.dtype(acc));
    at::Tensor hp = proj ? at::empty({N, H}, opts) : at::Tensor();
    const at::Tensor whh_t = whh.t();
    const at::Tensor whr_t = proj ? whr.t() : at::Tensor();
    T* wsp = write_ws ? ptr<T>(r.workspace) : nullptr;
    T* outp = ptr<T>(r.output);
    for (int64_t k = 0; k < s.steps(); ++k) {
      const int64_t t = s.time_at(k), n = s.sizes[t], off = s.offsets[t];
      at::Tensor hg_n = hg.narrow(0, 0, n);
      mm_acc_out(hg_n, h_state.narrow(0, 0, n), whh_t);
      ForwardStep<T> p;
      p.rows = n;
      p.hidden = H;
      p.relu = a.relu;
      p.workspace = wsp ? wsp + off * W * H : nullptr;
      p.x_gates = ptr<A>(xg.gates) + off * xg.ld;
      p.x_ld = xg.ld;
      p.hidden_gates = ptr<A>(hg);
      p.b_ih = ptr<T>(bih);
      p.b_hh = ptr<T>(bhh);
      p.c_state = ptr<A>(c_state);
      p.output = proj ? ptr<T>(hp) : outp + off * P;
      p.h_state = proj ? nullptr : ptr<T>(h_state);
      C10_CUDA_CHECK(Cell::forward_step(p, stream));
      if (proj) {
        at::Tensor out_n = r.output.narrow(0, off, n);
        at::mm_out(out_n, hp.narrow(0, 0, n), whr_t);
        h_state.narrow(0, 0, n).copy_(out_n);
      }
      if (resets.defined() && k + 1 < s.steps()) {
        // rows that restart at the next step carry h0 (and c0) into it
        const int64_t n1 = s.sizes[s.time_at(k + 1)];
        const at::Tensor m = step_mask(resets, s, k + 1, n1);
        at::Tensor h_rows = h_state.narrow(0, 0, n1);
        h_rows.copy_(at::where(m, a.h0.narrow(0, 0, n1).to(dtype), h_rows));
        if (Cell::kCellState) {
          at::Tensor c_rows = c_state.narrow(0, 0, n1);
          c_rows.copy_(at::where(m, a.c0->narrow(0, 0, n1).to(acc), c_rows));
        }
      }
    }
    r.h_n = h_state;
    if (Cell::kCellState) r.c_n = as_dtype(c_state, dtype);
  });
  r.output = shaped_like_input(r.output, a.input);
  if (W > 0 && !a.need_workspace) r.workspace = at::empty({0, W * H}, opts);
  return r;
}

// The backward op's arguments; grad_c_n, c0 and w_hr for the LSTM only, workspace for
// the cells that have one.
struct BackwardArgs {
  const at::Tensor& grad_output;
  const at::Tensor& grad_h_n;
  const at::Tensor* grad_c_n;
  const at::Tensor& input;
  const std::optional<at::Tensor>& batch_sizes;
  const at::Tensor& h0;
  const at::Tensor* c0;
  const at::Tensor& w_ih;
  const at::Tensor& w_hh;
  const std::optional<at::Tensor>& w_hr;
  const at::Tensor& output;
  const at::Tensor* workspace;
  bool reverse;
  bool relu;
  bool record_norms;  // the gradient-norm monitor (registration.cpp)
  const std::optional<at::Tensor>* grad_cell_states;  // LSTM: [R, H] or none
  double grad_clip = 0;  // the RNN's recurrent_grad_clip (0: off)
  const std::optional<at::Tensor>* reset = nullptr;  // the forward's per-step resets
  // which of grad_input, the initial states' and the weights' gradients to make; the
  // others come back as [0] tensors (registration.cpp)
  std::array<bool, 3> output_mask = {true, true, true};
};

struct BackwardResult {
  at::Tensor grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh,
      grad_w_hr, step_norms;
};

template <class Cell>
BackwardResult recurrent_backward(const BackwardArgs& a) {
  constexpr int64_t G = Cell::kGates, W = Cell::kWorkspace;
  const char* op = Cell::kBackward;
  check_on_cuda(op, a.input);
  const RnnShapes sh = check_rnn_args(op, G, a.input, a.batch_sizes, a.h0, a.c0, a.w_ih,
                                      a.w_hh, std::nullopt, std::nullopt, a.w_hr, a.reverse);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, P = sh.state_size, N = s.batch, R = s.rows;
  const int64_t I = sh.input_size;
  if (W > 0) {
    check_shape(op, *a.workspace, "workspace", {R, W * H},
                W == 5 ? "rows, 5*hidden_size" : "rows, 4*hidden_size");
    check_same_dtype(op, a.input, *a.workspace, "workspace");
  }
  check_shape(op, a.grad_output, "grad_output", a.output.sizes(), "the output's shape");
  check_shape(op, a.grad_h_n, "grad_h_n", a.h0.sizes(), "h0's shape");
  if (Cell::kCellState) check_shape(op, *a.grad_c_n, "grad_c_n", a.c0->sizes(), "c0's shape");
  check_same_dtype(op, a.input, a.grad_output, "grad_output");
  check_same_dtype(op, a.input, a.grad_h_n, "grad_h_n");
  if (Cell::kCellState) check_same_dtype(op, a.input, *a.grad_c_n, "grad_c_n");
  check_same_dtype(op, a.input, a.output, "output");
  TORCH_CHECK_VALUE(a.output.numel() == R * P, op, ": expected output with ", R * P,
                    " elements (rows x ", P, "), got ", shape_str(a.output));
  const c10::cuda::CUDAGuard guard(a.input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto opts = a.input.options();
  const at::ScalarType dtype = a.input.scalar_type(), acc = acc_dtype(dtype);
  const bool proj = a.w_hr.has_value() && a.w_hr->defined();
  const at::Tensor whr = proj ? a.w_hr->contiguous() : at::Tensor();
  const at::Tensor whh = a.w_hh.contiguous(), wih = a.w_ih.contiguous();
  const at::Tensor ws = W > 0 ? a.workspace->contiguous() : at::Tensor();
  const at::Tensor go = a.grad_output.contiguous().view({R, P});
  const at::Tensor out = a.output.contiguous().view({R, P});
  const at::Tensor x = a.input.contiguous().view({R, I});
  const at::Tensor h0c = a.h0.contiguous();
  const at::Tensor c0c = Cell::kCellState ? a.c0->contiguous() : at::Tensor();
  const bool want_input = a.output_mask[0], want_states = a.output_mask[1],
             want_weights = a.output_mask[2];

  // dL/dh and dL/dc between steps in the math dtype (fp32 for the half types). The GRU
  // keeps dL/dh as two parts: dh_state (bypassing w_hh, written by its kernel) and dh_mm
  // (through w_hh, written by the GEMM); the other cells' GEMM writes dh_state itself.
  at::Tensor dh_state = fresh_copy(a.grad_h_n, acc);  // [N, P]
  at::Tensor dc_state = Cell::kCellState ? fresh_copy(*a.grad_c_n, acc) : at::Tensor();
  at::Tensor dh_mm = Cell::kSplitGateGrads ? at::zeros({N, H}, opts.dtype(acc)) : at::Tensor();
  at::Tensor& dh_gemm = Cell::kSplitGateGrads ? dh_mm : dh_state;
  at::Tensor dgx = at::empty({R, G * H}, opts);
  at::Tensor dgh = Cell::kSplitGateGrads ? at::empty({R, G * H}, opts) : dgx;
  at::Tensor h_prev = at::empty({R, P}, opts);
  at::Tensor dout = proj ? at::empty({R, P}, opts) : at::Tensor();  // total dL/d(out rows)
  at::Tensor dhp = proj ? at::empty({N, H}, opts.dtype(acc)) : at::Tensor();
  const at::Tensor grad_cs =
      Cell::kCellState && a.grad_cell_states && a.grad_cell_states->has_value() &&
              (*a.grad_cell_states)->defined()
          ? (*a.grad_cell_states)->to(opts.dtype(acc)).contiguous()
          : at::Tensor();
  if (grad_cs.defined()) {
    check_shape(op, grad_cs, "grad_cell_states", {R, H}, "rows, hidden_size");
  }
  // Per-step resets: the gradients that reach h0 and c0 through rows that restarted.
  const at::Tensor resets = device_resets(op, a.reset, s, a.input);
  at::Tensor reset_dh0 = resets.defined() ? at::zeros({N, P}, opts.dtype(acc)) : at::Tensor();
  at::Tensor reset_dc0 = resets.defined() && Cell::kCellState ? at::zeros({N, H}, opts.dtype(acc))
                                                              : at::Tensor();
  // The gradient-norm monitor's sums of squares per step [T, kinds] (registration.cpp).
  at::Tensor step_norms = at::zeros({a.record_norms ? s.steps() : 0, Cell::kCellState ? 2 : 1},
                                    opts.dtype(at::kDouble));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, Cell::kBackward, [&] {
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
      BackwardStep<T> p;
      p.rows = n;
      p.hidden = H;
      p.state = P;
      p.relu = a.relu;
      // resets: rows that restarted at step k + 1 took h0 and c0 into it, so what came
      // back from it is theirs; rows that restart at step k read h0 and c0 as their previous
      // state (copies of the previous rows, fixed, in place of the originals)
      at::Tensor ws_prev_fixed, out_prev_fixed;
      if (resets.defined()) {
        if (k + 1 < s.steps()) {
          const at::Tensor m = step_mask(resets, s, k + 1, s.sizes[s.time_at(k + 1)]);
          move_masked_rows(m, dh_state, reset_dh0);
          if (Cell::kSplitGateGrads) move_masked_rows(m, dh_mm, reset_dh0);
          if (Cell::kCellState) move_masked_rows(m, dc_state, reset_dc0);
        }
        if (prev.from_seq > 0) {
          const at::Tensor m = step_mask(resets, s, k, prev.from_seq);
          out_prev_fixed = at::where(m, h0c.narrow(0, 0, prev.from_seq),
                                     out.narrow(0, prev.offset, prev.from_seq))
                               .contiguous();
          if (Cell::kCellState && W > 0) {
            ws_prev_fixed = ws.narrow(0, prev.offset, prev.from_seq).clone();
            at::Tensor c_prev = ws_prev_fixed.narrow(1, 4 * H, H);
            c_prev.copy_(at::where(m, c0c.narrow(0, 0, prev.from_seq), c_prev));
          }
        }
      }
      if (proj) {
        // dout rows = grad_output rows + dh; dhp = dout rows @ w_hr    [n, P] x [P, H]
        at::Tensor dout_n = dout.narrow(0, off, n);
        at::add_out(dout_n, go.narrow(0, off, n), dh_state.narrow(0, 0, n));
        at::Tensor dhp_n = dhp.narrow(0, 0, n);
        mm_acc_out(dhp_n, dout_n, whr);
        p.grad_h = ptr<A>(dhp);
      } else {
        p.grad_output = gop + off * P;
        p.grad_h = ptr<A>(dh_state);
      }
      if (Cell::kCellState && grad_cs.defined()) {
        // the gradient reaching c_t directly (return_states), added to the carried one
        dc_state.narrow(0, 0, n).add_(grad_cs.narrow(0, off, n));
      }
      if (a.record_norms) {
        // Made with ATen ops from what the step's kernel is about to read (it then
        // overwrites dc_state): a few small kernels per step, only while recording.
        // h_t's gradient: the output's plus what came from step t + 1.
        at::Tensor dh_total =
            proj ? dout.narrow(0, off, n).to(at::kDouble)
                 : go.narrow(0, off, n).to(at::kDouble) + dh_state.narrow(0, 0, n);
        if (Cell::kSplitGateGrads) dh_total = dh_total + dh_mm.narrow(0, 0, n);
        step_norms.select(0, t).select(0, 0).copy_(dh_total.square().sum());
        if (Cell::kCellState) {
          // c_t's: dc + dh * o * (1 - tanh(c)^2), dh that of the unprojected h
          const at::Tensor dh_cell = proj ? dhp.narrow(0, 0, n).to(at::kDouble) : dh_total;
          const at::Tensor rows = ws.narrow(0, off, n).to(at::kDouble);
          const at::Tensor tc = rows.narrow(1, 4 * H, H).tanh();
          const at::Tensor dc = dc_state.narrow(0, 0, n) + dh_cell * rows.narrow(1, 3 * H, H) *
                                                               (1 - tc * tc);
          step_norms.select(0, t).select(0, 1).copy_(dc.square().sum());
        }
      }
      p.grad_h_mm = ptr<A>(dh_mm);
      p.dc_state = ptr<A>(dc_state);
      p.output = outp + off * P;
      p.workspace = wsp ? wsp + off * W * H : nullptr;
      p.workspace_prev = ws_prev_fixed.defined() ? ptr<T>(ws_prev_fixed)
                         : wsp && prev.from_seq > 0 ? wsp + prev.offset * W * H
                                                    : nullptr;
      p.out_prev = out_prev_fixed.defined() ? ptr<T>(out_prev_fixed)
                   : prev.from_seq > 0       ? outp + prev.offset * P
                                             : nullptr;
      p.from_seq = prev.from_seq;
      p.h0 = ptr<T>(h0c);
      p.c0 = ptr<T>(c0c);
      p.h_prev_out = hpp + off * P;
      p.grad_x = dgxp + off * G * H;
      p.grad_h_gates = dghp + off * G * H;
      C10_CUDA_CHECK(Cell::backward_step(p, stream));
      if (a.grad_clip > 0) {
        // recurrent_grad_clip (the RNN): the step's pre-activation gradients, before they
        // reach h_{t-1} and the weights; torch's clamp leaves a NaN NaN
        TORCH_INTERNAL_ASSERT(!Cell::kSplitGateGrads);
        dgx.narrow(0, off, n).clamp_(-a.grad_clip, a.grad_clip);
      }
      // dh[:n] = dgates_h rows @ w_hh      [n, G*H] x [G*H, P]; after the last step,
      // h0's, only if wanted
      if (k == 0 && !want_states) break;
      at::Tensor dh_n = dh_gemm.narrow(0, 0, n);
      mm_acc_out(dh_n, dgh.narrow(0, off, n), whh);
    }
  });

  // The large GEMMs after the loop, those wanted.
  BackwardResult r;
  // each its own [0] tensor: an op's results must not alias each other
  for (at::Tensor* t : {&r.grad_input, &r.grad_h0, &r.grad_c0, &r.grad_w_ih, &r.grad_w_hh,
                        &r.grad_b_ih, &r.grad_b_hh, &r.grad_w_hr}) {
    *t = at::empty({0}, opts);
  }
  r.step_norms = step_norms;
  if (want_input) {
    r.grad_input = at::empty({R, I}, opts);
    at::mm_out(r.grad_input, dgx, wih);
    r.grad_input = shaped_like_input(r.grad_input, a.input);
  }
  if (want_states) {
    if (resets.defined()) dh_state.add_(reset_dh0);
    if (resets.defined() && Cell::kCellState) dc_state.add_(reset_dc0);
    r.grad_h0 = as_dtype(Cell::kSplitGateGrads ? dh_state.add_(dh_mm) : dh_state, dtype);
    if (Cell::kCellState) r.grad_c0 = as_dtype(dc_state, dtype);
  }
  if (!want_weights) return r;
  r.grad_w_ih = weight_grad(dgx.t(), x);
  r.grad_w_hh = weight_grad(dgh.t(), h_prev);
  r.grad_b_ih = at::empty({G * H}, opts);
  at::sum_out(r.grad_b_ih, dgx, at::IntArrayRef(kDim0));
  if (Cell::kSplitGateGrads) {
    r.grad_b_hh = at::empty({G * H}, opts);
    at::sum_out(r.grad_b_hh, dgh, at::IntArrayRef(kDim0));
  } else {
    r.grad_b_hh = r.grad_b_ih.clone();
  }
  if (proj) {
    // The projection's input o * tanh(c), recomputed from the LSTM workspace (i, f, g,
    // o, c) rather than stored.
    const at::Tensor o = ws.narrow(1, 3 * H, H), c = ws.narrow(1, 4 * H, H);
    r.grad_w_hr = weight_grad(dout.t(), o * c.tanh());
  }
  return r;
}

}  // namespace cuda
}  // namespace gatedrnn
