// GRU over one direction of a (possibly packed) sequence, on the CPU.
// Gate order r, z, n as in torch.nn.GRU:
//   r = s(W_ir x + b_ir + W_hr h + b_hr), z = s(W_iz x + b_iz + W_hz h + b_hz)
//   n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h
// The time loops; the per-step pointwise passes are built once per ISA (isa/gru.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "block_cache.h"
#include "isa/gru.h"
#include "recurrence.h"
#include "recurrent_gemm.h"

namespace gatedrnn {
namespace {

constexpr int64_t kGates = 3;
constexpr const char* kForward = "gatedrnn.gru_forward";
constexpr const char* kBackward = "gatedrnn.gru_backward";

// The time loop runs on a ForwardTeam. The n gate needs W_hn h apart from W_in x, so the
// recurrent GEMM goes to its own [N, 3H] buffer rather than into the gate columns.
// ws may be undefined (no backward will read it).
template <typename scalar_t>
void gru_forward_impl(const RnnShapes& sh, const at::Tensor& x, const at::Tensor& w_ih,
                      const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
                      const at::Tensor& h0, at::Tensor& out, at::Tensor& h_n,
                      at::Tensor& h_state, at::Tensor& ws, const Resets& resets,
                      GemmPrecision precision) {
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, N = s.batch, G = kGates * H;
  const UnitBlocks units = unit_blocks(H, kGates, H, N, s.steps());
  const UnitBlockGemm<scalar_t> hidden(w_hh, kGates, H, units, N, s.steps(), precision);
  at::Tensor hg = at::empty({N, G}, b_ih.options());
  scalar_t* hgp = hg.mutable_data_ptr<scalar_t>();
  // the workspace's rows, in the loop's dtype or, for the bfloat16 op, bfloat16 bits
  const bool ws_bf16 = ws.defined() && is_bf16(ws);
  scalar_t* wsp = ws.defined() && !ws_bf16 ? ws.mutable_data_ptr<scalar_t>() : nullptr;
  uint16_t* ws_bits = ws_bf16 ? static_cast<uint16_t*>(ws.mutable_data_ptr()) : nullptr;
  const StepOutput<scalar_t> output(out, s, resets, h0, h_n);
  const scalar_t* bih = b_ih.const_data_ptr<scalar_t>();
  const scalar_t* bhh = b_hh.const_data_ptr<scalar_t>();
  const GruKernels<scalar_t>& kernels = gru_kernels<scalar_t>();
  ForwardTeam<scalar_t> team(s, x, w_ih, kGates, units, h0, precision, resets);
  const auto block = [&](const TeamStep<scalar_t>& st, int64_t b, int64_t u0, int64_t len) {
    scalar_t* hgb = hgp + kGates * u0;
    // hg_b[:n] = h[:n] @ w_hh_b^T       [n, H] x [H, 3 len]
    output.recurrent(hidden, b, st, scalar_t(0), hgb, G);
    const scalar_t* xg = st.gates + kGates * u0;
    if (ws_bits) {
      kernels.forward_units_bf16(st.n, H, u0, len, xg, hgb, G, bih, bhh, st.cur,
                                 ws_bits + st.off * 4 * H, output.rows(st), st.next);
    } else {
      kernels.forward_units(st.n, H, u0, len, xg, hgb, G, bih, bhh, st.cur,
                            wsp ? wsp + st.off * 4 * H : nullptr, output.rows(st), st.next);
    }
    output.finish(st, u0, len);
  };
  team.run(0, true, block, [](const TeamMember&, const TeamStep<scalar_t>&) {});
  h_state = team.final_state();  // one of the team's two state buffers, not a copy
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    bool reverse, bool need_workspace, const std::optional<at::Tensor>& reset) {
  const RnnShapes sh = check_rnn_args(kForward, kGates, input, batch_sizes, h0, nullptr, w_ih,
                                      w_hh, b_ih, b_hh, std::nullopt, reverse);
  const Resets resets = resets_of(kForward, reset, sh.schedule);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size;
  // x as it is, bfloat16 too: the input projection reads it so (ForwardTeam)
  const at::Tensor x = cached_contiguous(input).view({s.rows, sh.input_size});
  const auto opts = x.options().dtype(loop_dtype(input));
  const at::Tensor bih = optional_bias(widened(b_ih), kGates * H, opts);
  const at::Tensor bhh = optional_bias(widened(b_hh), kGates * H, opts);
  at::Tensor out = step_output(input, true, s.rows, H, opts);
  at::Tensor h_n = final_state_in_output(out, s, h0), h_state;
  at::Tensor ws = cached_empty({need_workspace ? s.rows : 0, 4 * H},
                               x.options().dtype(workspace_dtype(input, true)));
  at::Tensor ws_arg = need_workspace ? ws : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(loop_dtype(input), kForward, [&] {
    gru_forward_impl<scalar_t>(sh, x, cached_contiguous(w_ih), cached_contiguous(w_hh), bih, bhh,
                               h0, out, h_n, h_state, ws_arg, resets, precision_of(input));
  });
  return {shaped_like_input(narrowed(out, input), input),
          h_n.defined() ? h_n : narrowed(h_state, input), ws};
}

// The backward loop, on a BackwardTeam; the input and weight gradients come out of
// ChunkedGrads, which reads the two column ranges of the gradient buffer: dr, dz, dn for
// w_ih and b_ih, dr, dz, dn * r for w_hh and b_hh.
template <typename scalar_t>
InputAndWeightGrads gru_backward_impl(const RnnShapes& sh, const Rows<scalar_t>& grad_out,
                                      const at::Tensor& x, const at::Tensor& w_ih,
                                      const at::Tensor& w_hh, const at::Tensor& ws,
                                      const at::Tensor& out, const at::Tensor& h0,
                                      at::Tensor& dh_state, const Resets& resets,
                                      at::Tensor& grad_h0_reset, StepNorms& norms,
                                      GemmPrecision precision, const GradsWanted& wanted) {
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size;
  const bool ws_bf16 = is_bf16(ws);  // bfloat16 bits, for the bfloat16 op
  const scalar_t* wsp = ws_bf16 ? nullptr : ws.const_data_ptr<scalar_t>();
  const uint16_t* ws_bits =
      ws_bf16 ? static_cast<const uint16_t*>(ws.const_data_ptr()) : nullptr;
  // The previous states, read by the pointwise pass: out's rows, a bfloat16 out's widened
  // step by step (Rows::at).
  const Rows<scalar_t> out_rows = strided_rows<scalar_t>(out, s.rows, H, s.batch);
  scalar_t* dhs = dh_state.mutable_data_ptr<scalar_t>();
  const GruKernels<scalar_t>& kernels = gru_kernels<scalar_t>();
  ChunkedGrads<scalar_t> grads(s, kGruGradCols * H, {{0, 0, 2 * H}, {3 * H, 2 * H, H}},
                               {{0, 0, kGates * H}}, false, x, out, h0, w_ih, kGates * H,
                               precision, resets, wanted);
  const scalar_t* h0p = grads.initial_states();
  // what reaches h0 through the rows that restarted from it (resets)
  scalar_t* dh0 = resets.flags ? grad_h0_reset.mutable_data_ptr<scalar_t>() : nullptr;
  const UnitBlocks units = unit_blocks(H, kGates, H, s.batch, s.steps());
  BackwardTeam<scalar_t> team(s, w_hh, kGruGradCols * H, units, precision, wanted.states);
  // dh_state[:n] = dh * z + dgates[:, 0:3H] @ w_hh      [n, 3H] x [3H, H]
  team.run(grads, dhs, scalar_t(1),
           [&](int64_t k, int64_t n, int64_t off, scalar_t* dg, int64_t u0, int64_t len) {
             const PrevRows<scalar_t> h_prev =
                 previous_rows(s, k, out_rows, u0, len, h0p, H, resets);
             move_reset_columns(resets, s, k + 1, dhs, dh0, H, u0, len);
             const scalar_t* go = grad_out.at(off, n, u0, len);
             double* sq = norms.at(s.time_at(k), u0 / units.size);
             if (ws_bits) {
               kernels.backward_units_bf16(n, H, u0, len, go, grad_out.step_ld(), dhs,
                                           ws_bits + off * 4 * H, h_prev, dg, sq);
             } else {
               kernels.backward_units(n, H, u0, len, go, grad_out.step_ld(), dhs,
                                      wsp + off * 4 * H, h_prev, dg, sq);
             }
           });
  return grads.result();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gru_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
             const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
             const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
             const at::Tensor& workspace, bool reverse, const std::optional<at::Tensor>& reset,
             bool record_norms, std::array<bool, 3> output_mask) {
  const GradsWanted wanted = GradsWanted::of(output_mask);
  const RnnShapes sh = check_rnn_args(kBackward, kGates, input, batch_sizes, h0, nullptr, w_ih,
                                      w_hh, std::nullopt, std::nullopt, std::nullopt, reverse);
  const Resets resets = resets_of(kBackward, reset, sh.schedule);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size;
  check_shape(kBackward, workspace, "workspace", {s.rows, 4 * H}, "rows, 4*hidden_size");
  check_shape(kBackward, grad_output, "grad_output", output.sizes(), "the output's shape");
  check_same_dtype(kBackward, input, output, "output");
  check_shape(kBackward, grad_h_n, "grad_h_n", h0.sizes(), "h0's shape");
  check_workspace_dtype(kBackward, input, workspace, true);
  // x and out as they are, bfloat16 too (ChunkedGrads, Rows::at)
  const at::Tensor x = cached_contiguous(input).view({s.rows, sh.input_size});
  const at::Tensor out = cached_contiguous(output).view({s.rows, H});
  const at::Tensor ws = cached_contiguous(workspace);
  // The weights as they are (bfloat16 in the bfloat16 form): the GEMMs read them so, or
  // widen them where they cannot (recurrent_gemm.h, ChunkedGrads).
  const at::Tensor wih = cached_contiguous(w_ih), whh = cached_contiguous(w_hh);
  at::Tensor dh_state = widened_copy(grad_h_n);
  InputAndWeightGrads g;
  at::Tensor grad_h0_reset = resets.flags ? at::zeros_like(dh_state) : at::Tensor();
  StepNorms norms(record_norms, s.steps(), unit_blocks(H, kGates, H, s.batch, s.steps()).count(),
                  1);
  AT_DISPATCH_FLOATING_TYPES(loop_dtype(input), kBackward, [&] {
    g = gru_backward_impl<scalar_t>(sh, strided_rows<scalar_t>(grad_output, s.rows, H, s.batch),
                                    x, wih, whh, ws, out, h0, dh_state, resets, grad_h0_reset,
                                    norms, precision_of(input), wanted);
  });
  if (resets.flags && wanted.states) dh_state.add_(grad_h0_reset);
  if (!wanted.states) dh_state = at::Tensor();
  const auto result = [&](const at::Tensor& t) { return narrowed(t, input); };
  return {shaped_like_input(result(g.grad_input), input), result(dh_state), result(g.grad_w_ih),
          result(g.grad_w_hh), result(g.grad_b_ih), result(g.grad_b_hh), norms.result()};
}

}  // namespace

TORCH_LIBRARY_IMPL(gatedrnn, CPU, m) {
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
}

}  // namespace gatedrnn
