// Elman RNN (tanh or relu) over one direction of a (possibly packed) sequence, on the CPU.
//   h' = act(W_ih x + b_ih + W_hh h + b_hh)
// The time loops; the per-step pointwise passes are built once per ISA (isa/rnn.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "block_cache.h"
#include "isa/rnn.h"
#include "recurrence.h"
#include "recurrent_gemm.h"

namespace gatedrnn {
namespace {

constexpr const char* kForward = "gatedrnn.rnn_forward";
constexpr const char* kBackward = "gatedrnn.rnn_backward";

bool is_relu(const char* op, c10::string_view nonlinearity) {
  TORCH_CHECK_VALUE(nonlinearity == "tanh" || nonlinearity == "relu", op,
                    ": expected nonlinearity to be 'tanh' or 'relu', got '",
                    std::string(nonlinearity), "'");
  return nonlinearity == "relu";
}

// The time loop runs on a ForwardTeam; each block adds its recurrent GEMM into its
// columns of the input projection and activates them.
template <typename scalar_t>
void rnn_forward_impl(const RnnShapes& sh, bool relu, const at::Tensor& x,
                      const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& bias,
                      const at::Tensor& h0, at::Tensor& out, at::Tensor& h_n,
                      at::Tensor& h_state, const Resets& resets, GemmPrecision precision) {
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, N = s.batch;
  const UnitBlocks units = unit_blocks(H, 1, H, N, s.steps());
  const UnitBlockGemm<scalar_t> hidden(w_hh, 1, H, units, N, s.steps(), precision);
  const StepOutput<scalar_t> output(out, s, resets, h0, h_n);
  const scalar_t* bp = bias.const_data_ptr<scalar_t>();
  const auto forward_units = rnn_kernels<scalar_t>().forward_units;
  ForwardTeam<scalar_t> team(s, x, w_ih, 1, units, h0, precision, resets);
  const auto block = [&](const TeamStep<scalar_t>& st, int64_t b, int64_t u0, int64_t len) {
    // gates[:n, block] += h[:n] @ w_hh_b^T      [n, H] x [H, len]
    output.recurrent(hidden, b, st, scalar_t(1), st.gates + u0, H);
    forward_units(st.n, H, u0, len, relu, st.gates, bp, output.rows(st), st.next);
    output.finish(st, u0, len);
  };
  team.run(0, true, block, [](const TeamMember&, const TeamStep<scalar_t>&) {});
  h_state = team.final_state();  // one of the team's two state buffers, not a copy
}

std::tuple<at::Tensor, at::Tensor> rnn_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    c10::string_view nonlinearity, bool reverse, double grad_clip,
    const std::optional<at::Tensor>& reset) {
  const bool relu = is_relu(kForward, nonlinearity);
  check_grad_clip(kForward, grad_clip);  // carried for the backward (autograd)
  const RnnShapes sh = check_rnn_args(kForward, 1, input, batch_sizes, h0, nullptr, w_ih, w_hh,
                                      b_ih, b_hh, std::nullopt, reverse);
  const Resets resets = resets_of(kForward, reset, sh.schedule);
  const Schedule& s = sh.schedule;
  // x as it is, bfloat16 too: the input projection reads it so (ForwardTeam)
  const at::Tensor x = cached_contiguous(input).view({s.rows, sh.input_size});
  const auto opts = x.options().dtype(loop_dtype(input));
  const at::Tensor bias = combined_bias(widened(b_ih), widened(b_hh), sh.hidden_size, opts);
  at::Tensor out = step_output(input, true, s.rows, sh.hidden_size, opts);
  at::Tensor h_n = final_state_in_output(out, s, h0), h_state;
  AT_DISPATCH_FLOATING_TYPES(loop_dtype(input), kForward, [&] {
    rnn_forward_impl<scalar_t>(sh, relu, x, cached_contiguous(w_ih), cached_contiguous(w_hh),
                               bias, h0, out, h_n, h_state, resets, precision_of(input));
  });
  return {shaped_like_input(narrowed(out, input), input),
          h_n.defined() ? h_n : narrowed(h_state, input)};
}

// Backward through act uses the output alone: tanh' = 1 - h^2, relu' = [h > 0].
template <typename scalar_t>
InputAndWeightGrads rnn_backward_impl(const RnnShapes& sh, bool relu,
                                      const Rows<scalar_t>& grad_out, const at::Tensor& x,
                                      const at::Tensor& out,
                                      const at::Tensor& h0, const at::Tensor& w_ih,
                                      const at::Tensor& w_hh, at::Tensor& dh_state,
                                      scalar_t clip, const Resets& resets,
                                      at::Tensor& grad_h0_reset, StepNorms& norms,
                                      GemmPrecision precision, const GradsWanted& wanted) {
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size;
  // The step's h, read by the pointwise pass: out's rows, a bfloat16 out's widened step by
  // step as the output's gradient is (Rows::at).
  const Rows<scalar_t> h_rows = strided_rows<scalar_t>(out, s.rows, H, s.batch);
  scalar_t* dhs = dh_state.mutable_data_ptr<scalar_t>();
  const auto backward_units = rnn_kernels<scalar_t>().backward_units;
  ChunkedGrads<scalar_t> grads(s, H, {{0, 0, H}}, {{0, 0, H}}, true, x, out, h0, w_ih, H,
                               precision, resets, wanted);
  // what reaches h0 through the rows that restarted from it (resets)
  scalar_t* dh0 = resets.flags ? grad_h0_reset.mutable_data_ptr<scalar_t>() : nullptr;
  const UnitBlocks units = unit_blocks(H, 1, H, s.batch, s.steps());
  BackwardTeam<scalar_t> team(s, w_hh, H, units, precision, wanted.states);
  team.run(grads, dhs, scalar_t(0),
           [&](int64_t k, int64_t n, int64_t off, scalar_t* dg, int64_t u0, int64_t len) {
             move_reset_columns(resets, s, k + 1, dhs, dh0, H, u0, len);
             backward_units(n, H, u0, len, relu, h_rows.at(off, n, u0, len),
                            grad_out.at(off, n, u0, len), grad_out.step_ld(), dhs, dg, clip,
                            norms.at(s.time_at(k), u0 / units.size));
           });
  return grads.result();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
rnn_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
             const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
             const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
             c10::string_view nonlinearity, bool reverse, double grad_clip,
             const std::optional<at::Tensor>& reset, bool record_norms,
             std::array<bool, 3> output_mask) {
  const GradsWanted wanted = GradsWanted::of(output_mask);
  const bool relu = is_relu(kBackward, nonlinearity);
  check_grad_clip(kBackward, grad_clip);
  const RnnShapes sh = check_rnn_args(kBackward, 1, input, batch_sizes, h0, nullptr, w_ih, w_hh,
                                      std::nullopt, std::nullopt, std::nullopt, reverse);
  const Resets resets = resets_of(kBackward, reset, sh.schedule);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size;
  check_shape(kBackward, grad_output, "grad_output", output.sizes(), "the output's shape");
  check_same_dtype(kBackward, input, output, "output");
  check_shape(kBackward, grad_h_n, "grad_h_n", h0.sizes(), "h0's shape");
  const at::Tensor x = cached_contiguous(input).view({s.rows, sh.input_size});
  // x and out as they are, bfloat16 too (ChunkedGrads, Rows::at)
  const at::Tensor out = cached_contiguous(output).view({s.rows, H});
  // The weights as they are (bfloat16 in the bfloat16 form): the GEMMs read them so, or
  // widen them where they cannot (recurrent_gemm.h, ChunkedGrads).
  const at::Tensor wih = cached_contiguous(w_ih), whh = cached_contiguous(w_hh);
  at::Tensor dh_state = widened_copy(grad_h_n);
  InputAndWeightGrads g;
  at::Tensor grad_h0_reset = resets.flags ? at::zeros_like(dh_state) : at::Tensor();
  StepNorms norms(record_norms, s.steps(), unit_blocks(H, 1, H, s.batch, s.steps()).count(), 1);
  AT_DISPATCH_FLOATING_TYPES(loop_dtype(input), kBackward, [&] {
    g = rnn_backward_impl<scalar_t>(sh, relu,
                                    strided_rows<scalar_t>(grad_output, s.rows, H, s.batch), x,
                                    out, h0, wih, whh, dh_state, scalar_t(grad_clip), resets,
                                    grad_h0_reset, norms, precision_of(input), wanted);
  });
  if (resets.flags && wanted.states) dh_state.add_(grad_h0_reset);
  if (!wanted.states) dh_state = at::Tensor();
  const auto result = [&](const at::Tensor& t) { return narrowed(t, input); };
  return {shaped_like_input(result(g.grad_input), input), result(dh_state), result(g.grad_w_ih),
          result(g.grad_w_hh), result(g.grad_b_ih), result(g.grad_b_hh), norms.result()};
}

}  // namespace

TORCH_LIBRARY_IMPL(gatedrnn, CPU, m) {
  m.impl("rnn_forward", &rnn_forward);
  m.impl("rnn_backward", &rnn_backward);
}

}  // namespace gatedrnn
