// LSTM over one direction of a (possibly packed) sequence, on the CPU.
// Gate order i, f, g, o as in torch.nn.LSTM; with w_hr, h = W_hr (o * fast_tanh(c)).
// The time loops; the per-step pointwise passes are built once per ISA (isa/lstm.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "block_cache.h"
#include "isa/lstm.h"
#include "recurrence.h"
#include "recurrent_gemm.h"
#include "step_team.h"

namespace gatedrnn {
namespace {

constexpr int64_t kGates = 4;
constexpr const char* kForward = "gatedrnn.lstm_forward";
constexpr const char* kBackward = "gatedrnn.lstm_backward";

// A workspace row's columns: the gates, then c (isa/lstm.h, lstm_gate_columns); a
// bfloat16 op keeps its gates as float16 (half_gates), in a float32 workspace. The same
// on every CPU (recurrence.h, workspace_dtype). ops/lstm.py's workspace_columns mirrors it.
bool half_gates(const at::Tensor& input) { return is_bf16(input); }
int64_t workspace_columns(const at::Tensor& input, int64_t H) {
  return (half_gates(input) ? lstm_gate_columns<float, c10::Half>(H) : kGates * H) + H;
}

// The time loop runs on a ForwardTeam; each block adds its recurrent GEMM into its gate
// columns in place and runs the pointwise pass. With a projection, a second phase (after
// a barrier, since it reads every unit) projects the step's output by column blocks.
// ws may be undefined (no backward will read it).
template <typename scalar_t>
void lstm_forward_impl(const RnnShapes& sh, const at::Tensor& x, const at::Tensor& w_ih,
                       const at::Tensor& w_hh, const at::Tensor& bias, const at::Tensor& w_hr,
                       const at::Tensor& h0, at::Tensor& out, at::Tensor& h_n,
                       at::Tensor& h_state, at::Tensor& c_state,
                       const at::Tensor& c0, at::Tensor& ws, int64_t ws_ld, bool half,
                       const Resets& resets, GemmPrecision precision) {
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, P = sh.state_size, N = s.batch, G = kGates * H;
  const bool proj = w_hr.defined();
  const UnitBlocks units = unit_blocks(H, kGates, P, N, s.steps());
  const UnitBlockGemm<scalar_t> hidden(w_hh, kGates, H, units, N, s.steps(), precision);
  const UnitBlocks proj_units = proj ? unit_blocks(P, 1, H, N, s.steps()) : UnitBlocks{};
  const UnitBlockGemm<scalar_t> projection =
      proj ? UnitBlockGemm<scalar_t>(w_hr, 1, P, proj_units, N, s.steps(), precision)
           : UnitBlockGemm<scalar_t>();
  at::Tensor hp = proj ? at::empty({N, H}, bias.options()) : at::Tensor();
  scalar_t* wsp = ws.defined() ? ws.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* hpp = proj ? hp.mutable_data_ptr<scalar_t>() : nullptr;
  const StepOutput<scalar_t> output(out, s, resets, h0, h_n);
  scalar_t* outp = proj ? out.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* cs = c_state.mutable_data_ptr<scalar_t>();
  const scalar_t* bp = bias.const_data_ptr<scalar_t>();
  const scalar_t* c0p = c0.const_data_ptr<scalar_t>();
  const auto forward_units =
      half ? lstm_kernels<scalar_t>().forward_units_half : lstm_kernels<scalar_t>().forward_units;

  ForwardTeam<scalar_t> team(s, x, w_ih, kGates, units, h0, precision, resets);
  const auto block = [&](const TeamStep<scalar_t>& st, int64_t b, int64_t u0, int64_t len) {
    scalar_t* pre = st.gates + kGates * u0;
    // pre[:n] += h[:n] @ w_hh_b^T       [n, P] x [P, 4 len]
    output.recurrent(hidden, b, st, scalar_t(1), pre, G);
    scalar_t* ws_rows = wsp ? wsp + st.off * ws_ld : nullptr;
    if (!proj) {
      scalar_t* h = output.rows(st);
      forward_units(st.n, H, u0, len, pre, G, bp, cs, ws_rows, ws_ld, h, H,
                    h == st.next ? nullptr : st.next, H);
      output.finish(st, u0, len);
    } else {
      forward_units(st.n, H, u0, len, pre, G, bp, cs, ws_rows, ws_ld, hpp, H, nullptr, 0);
    }
    reset_columns(resets, s, st.k + 1, c0p, H, cs, H, u0, len);  // c of rows restarting next
  };
  const auto project = [&](const TeamMember& me, const TeamStep<scalar_t>& st) {
    if (!proj) return;
    me.barrier();
    const auto [p0, p1] = me.share(proj_units.count());
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t j0 = proj_units.begin(p), len = proj_units.length(p);
      // out[off:off+n, block] = hp[:n] @ w_hr_block^T   [n, H] x [H, len]
      projection.run(p, st.n, hpp, H, scalar_t(0), outp + st.off * P + j0, P, st.k);
      copy_columns(outp + st.off * P, st.next, 0, st.n, P, j0, len);
      copy_columns(st.cur, st.next, st.n, N, P, j0, len);
      team.reset_next(st, j0, len);
    }
  };
  team.run(proj_units.count(), !proj, block, project);
  h_state = team.final_state();  // one of the team's two state buffers, not a copy
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    bool reverse, bool need_workspace, const std::optional<at::Tensor>& reset) {
  const RnnShapes sh = check_rnn_args(kForward, kGates, input, batch_sizes, h0, &c0, w_ih,
                                      w_hh, b_ih, b_hh, w_hr, reverse);
  const Resets resets = resets_of(kForward, reset, sh.schedule);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, P = sh.state_size;
  // x as it is, bfloat16 too: the input projection reads it so (ForwardTeam)
  const at::Tensor x = cached_contiguous(input).view({s.rows, sh.input_size});
  const auto opts = x.options().dtype(loop_dtype(input));
  // The weights as they are (bfloat16 in the bfloat16 form): the GEMMs read them so, or
  // widen them where they cannot (recurrent_gemm.h).
  const at::Tensor wih = cached_contiguous(w_ih), whh = cached_contiguous(w_hh);
  const at::Tensor whr =
      (w_hr.has_value() && w_hr->defined()) ? cached_contiguous(*w_hr) : at::Tensor();
  const at::Tensor bias = combined_bias(widened(b_ih), widened(b_hh), kGates * H, opts);
  at::Tensor out = step_output(input, !whr.defined(), s.rows, P, opts);
  at::Tensor h_n = final_state_in_output(out, s, h0), h_state;
  const at::Tensor c0c = widened(c0).contiguous();
  at::Tensor c_state = c0c.clone();
  const int64_t ws_ld = workspace_columns(input, H);
  at::Tensor ws = cached_empty({need_workspace ? s.rows : 0, ws_ld}, opts);
  at::Tensor ws_arg = need_workspace ? ws : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(loop_dtype(input), kForward, [&] {
    lstm_forward_impl<scalar_t>(sh, x, wih, whh, bias, whr, h0, out, h_n, h_state, c_state,
                                c0c, ws_arg, ws_ld, half_gates(input), resets,
                                precision_of(input));
  });
  return {shaped_like_input(narrowed(out, input), input),
          h_n.defined() ? h_n : narrowed(h_state, input), narrowed(c_state, input), ws};
}

// dc_state[:n, u0:u0+len] += the step's rows of grad_cell_states [n, H] (the gradient
// that reaches c_t directly, when the cell states are returned: return_states).
template <typename scalar_t>
void add_cell_state_grads(int64_t n, int64_t H, int64_t u0, int64_t len, const scalar_t* rows,
                          scalar_t* dc_state) {
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t j = u0; j < u0 + len; ++j) dc_state[b * H + j] += rows[b * H + j];
  }
}

// The backward loop, on a BackwardTeam. With a projection, each step first makes dout,
// the total gradient w.r.t. the projected output, by blocks of its P columns; the
// pointwise pass of a block of hidden units starts with its columns of dh = dout @ w_hr.
// dout is kept for a chunk of steps, for grad_w_hr.
template <typename scalar_t>
InputAndWeightGrads lstm_backward_impl(const RnnShapes& sh, const Rows<scalar_t>& grad_out,
                                       const at::Tensor& x, const at::Tensor& out,
                                       const at::Tensor& h0, const at::Tensor& c0,
                                       const at::Tensor& w_ih, const at::Tensor& w_hh,
                                       const at::Tensor& w_hr, const at::Tensor& ws,
                                       bool half, at::Tensor& dh_state, at::Tensor& dc_state,
                                       at::Tensor& grad_w_hr, const scalar_t* grad_cs,
                                       const Resets& resets, at::Tensor& grad_h0_reset,
                                       at::Tensor& grad_c0_reset, StepNorms& norms,
                                       StepNorms& output_norms, GemmPrecision precision,
                                       const GradsWanted& wanted) {
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, P = sh.state_size, N = s.batch, G = kGates * H;
  const bool proj = w_hr.defined();
  const int64_t ws_ld = ws.size(1);
  const scalar_t* wsp = ws.const_data_ptr<scalar_t>();
  const scalar_t* wsc = wsp + ws_ld - H;  // the cell states' columns
  const scalar_t* c0p = c0.const_data_ptr<scalar_t>();
  scalar_t* dhs = dh_state.mutable_data_ptr<scalar_t>();
  scalar_t* dcs = dc_state.mutable_data_ptr<scalar_t>();
  // what reaches h0 and c0 through the rows that restarted from them (resets)
  scalar_t* dh0 = resets.flags ? grad_h0_reset.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* dc0 = resets.flags ? grad_c0_reset.mutable_data_ptr<scalar_t>() : nullptr;
  const auto backward_units = half ? lstm_kernels<scalar_t>().backward_units_half
                                   : lstm_kernels<scalar_t>().backward_units;
  ChunkedGrads<scalar_t> grads(s, G, {{0, 0, G}}, {{0, 0, G}}, true, x, out, h0, w_ih, G,
                               precision, resets, wanted);
  const UnitBlocks units = unit_blocks(H, kGates, P, N, s.steps());
  if (!proj) {
    BackwardTeam<scalar_t> team(s, w_hh, G, units, precision, wanted.states);
    team.run(grads, dhs, scalar_t(0),
             [&](int64_t k, int64_t n, int64_t off, scalar_t* dg, int64_t u0, int64_t len) {
               const PrevRows<scalar_t> c_prev =
                   previous_rows(s, k, wsc, ws_ld, c0p, H, resets);
               // the gradients w.r.t. the state that entered step k + 1, of rows that
               // restarted there, are h0's and c0's
               move_reset_columns(resets, s, k + 1, dhs, dh0, H, u0, len);
               move_reset_columns(resets, s, k + 1, dcs, dc0, H, u0, len);
               if (grad_cs) add_cell_state_grads(n, H, u0, len, grad_cs + off * H, dcs);
               backward_units(n, H, u0, len, grad_out.at(off, n, u0, len), grad_out.step_ld(),
                              dhs, wsp + off * ws_ld, ws_ld, c_prev, dcs, dg,
                              norms.at(s.time_at(k), u0 / units.size));
             });
    return grads.result();
  }

  const UnitBlocks state_units = unit_blocks(P, kGates, H, N, s.steps());
  BackwardTeam<scalar_t> team(s, w_hh, G, state_units, precision, wanted.states);
  const UnitBlockGemm<scalar_t> proj_gemm(w_hr.t(), 1, H, units, N, s.steps(), precision);
  at::Tensor dh_step = at::empty({N, H}, ws.options());
  at::Tensor dout = cached_empty({grads.max_rows(), P}, ws.options());
  scalar_t* dhp = dh_step.mutable_data_ptr<scalar_t>();
  scalar_t* doutp = dout.mutable_data_ptr<scalar_t>();
  // The chunk the team is in; rows of dout are relative to its first row.
  StepChunk chunk = grads.chunks_left() ? grads.chunk() : StepChunk{0, 0, 0, 0};
  const auto output_grad = [&](int64_t k, int64_t n, int64_t off, int64_t j0, int64_t len) {
    move_reset_columns(resets, s, k + 1, dhs, dh0, P, j0, len);  // h0's (resets)
    // dout[off:off+n, block] = grad_out[off:off+n, block] + dh_state[:n, block]
    scalar_t* d = doutp + (off - chunk.row_begin) * P;
    const scalar_t* g_out = grad_out.at(off, n, j0, len);
    const int64_t go_ld = grad_out.step_ld();
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t j = j0; j < j0 + len; ++j) d[b * P + j] = g_out[b * go_ld + j] + dhs[b * P + j];
    }
    if (double* sq = output_norms.at(s.time_at(k), j0 / state_units.size)) {
      // dout is the gradient reaching the step's state, the projected h
      for (int64_t b = 0; b < n; ++b) {
        for (int64_t j = j0; j < j0 + len; ++j) sq[0] += double(d[b * P + j]) * d[b * P + j];
      }
    }
  };
  const auto point = [&](int64_t k, int64_t n, int64_t off, scalar_t* dg, int64_t u0,
                         int64_t len) {
    const int64_t b = (u0 / units.size);
    // dh_step[:n, block] = dout[off:off+n] @ w_hr[:, block]      [n, P] x [P, len]
    proj_gemm.run(b, n, doutp + (off - chunk.row_begin) * P, P, scalar_t(0), dhp + u0, H);
    const PrevRows<scalar_t> c_prev = previous_rows(s, k, wsc, ws_ld, c0p, H, resets);
    move_reset_columns(resets, s, k + 1, dcs, dc0, H, u0, len);  // c0's (resets)
    if (grad_cs) add_cell_state_grads(n, H, u0, len, grad_cs + off * H, dcs);
    // norms' h entries (the unprojected h's) are not used: output_norms has the state's
    backward_units(n, H, u0, len, dhp, H, nullptr, wsp + off * ws_ld, ws_ld, c_prev, dcs, dg,
                   norms.at(s.time_at(k), b));
  };
  const auto grad_w_hr_of_chunk = [&](const StepChunk& c) {
    // grad_w_hr += dout^T @ (o * tanh(c)) over the chunk's rows; o * tanh(c), the
    // unprojected h, is recomputed from the workspace rather than stored.
    if (wanted.weights) {
      const at::Tensor rows = ws.narrow(0, c.row_begin, c.rows());
      const at::Tensor gates = half ? rows.narrow(1, 0, ws_ld - H).view(at::kHalf) : rows;
      const at::Tensor hp =
          gates.narrow(1, 3 * H, H).to(rows.scalar_type()) * rows.narrow(1, ws_ld - H, H).tanh();
      parallel_gemm<scalar_t>(P, H, c.rows(), GemmA<scalar_t>::transposed(doutp, P),
                              GemmB<scalar_t>::rows(hp.const_data_ptr<scalar_t>(), H),
                              scalar_t(1), grad_w_hr.mutable_data_ptr<scalar_t>(), H, precision);
    }
    if (grads.chunks_left()) chunk = grads.chunk();
  };
  team.run_projected(grads, dhs, units, point, output_grad, grad_w_hr_of_chunk);
  return grads.result();
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
  const GradsWanted wanted = GradsWanted::of(output_mask);
  const RnnShapes sh = check_rnn_args(kBackward, kGates, input, batch_sizes, h0, &c0, w_ih,
                                      w_hh, std::nullopt, std::nullopt, w_hr, reverse);
  const Resets resets = resets_of(kBackward, reset, sh.schedule);
  const Schedule& s = sh.schedule;
  const int64_t H = sh.hidden_size, P = sh.state_size;
  check_shape(kBackward, workspace, "workspace", {s.rows, workspace_columns(input, H)},
              half_gates(input) ? "rows, 3*hidden_size (a bfloat16 op's)"
                                : "rows, 5*hidden_size");
  check_shape(kBackward, grad_output, "grad_output", output.sizes(), "the output's shape");
  check_same_dtype(kBackward, input, output, "output");
  check_shape(kBackward, grad_h_n, "grad_h_n", h0.sizes(), "h0's shape");
  check_shape(kBackward, grad_c_n, "grad_c_n", c0.sizes(), "c0's shape");
  check_workspace_dtype(kBackward, input, workspace, false);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const bool with_cs = grad_cell_states.has_value() && grad_cell_states->defined();
  if (with_cs) {
    check_shape(kBackward, *grad_cell_states, "grad_cell_states", {s.rows, H},
                "rows, hidden_size");
  }
  // The weights as they are (bfloat16 in the bfloat16 form): the GEMMs read them so, or
  // widen them where they cannot (recurrent_gemm.h, ChunkedGrads).
  const at::Tensor whr = proj ? cached_contiguous(*w_hr) : at::Tensor();
  const at::Tensor ws = cached_contiguous(workspace);
  // x and out as they are, bfloat16 too: the weight gradients' GEMMs read them so
  // (ChunkedGrads)
  const at::Tensor x = cached_contiguous(input).view({s.rows, sh.input_size});
  const auto opts = x.options().dtype(loop_dtype(input));
  const at::Tensor out = cached_contiguous(output).view({s.rows, P});
  const at::Tensor c0c = widened(c0).contiguous();
  const at::Tensor whh = cached_contiguous(w_hh), wih = cached_contiguous(w_ih);
  at::Tensor dh_state = widened_copy(grad_h_n);
  at::Tensor dc_state = widened_copy(grad_c_n);
  at::Tensor grad_w_hr = proj && wanted.weights ? cached_zeros({P, H}, opts) : at::Tensor();
  const at::Tensor grad_cs = with_cs ? grad_cell_states->to(opts).contiguous() : at::Tensor();
  at::Tensor grad_h0_reset = resets.flags ? at::zeros_like(dh_state) : at::Tensor();
  at::Tensor grad_c0_reset = resets.flags ? at::zeros_like(dc_state) : at::Tensor();
  InputAndWeightGrads g;
  // Per step: h's and c's sums of squares, by blocks of hidden units; with a projection,
  // h's (the projected state's) by blocks of the state's columns, in output_norms.
  const int64_t N = s.batch;
  StepNorms norms(record_norms, s.steps(), unit_blocks(H, kGates, P, N, s.steps()).count(), 2);
  StepNorms output_norms(record_norms && proj, s.steps(),
                         unit_blocks(P, kGates, H, N, s.steps()).count(), 1);
  AT_DISPATCH_FLOATING_TYPES(loop_dtype(input), kBackward, [&] {
    g = lstm_backward_impl<scalar_t>(sh, strided_rows<scalar_t>(grad_output, s.rows, P, N),
                                     x, out, h0, c0c, wih, whh, whr, ws, half_gates(input),
                                     dh_state, dc_state,
                                     grad_w_hr,
                                     with_cs ? grad_cs.const_data_ptr<scalar_t>() : nullptr,
                                     resets, grad_h0_reset, grad_c0_reset, norms, output_norms,
                                     precision_of(input), wanted);
  });
  if (resets.flags && wanted.states) {
    dh_state.add_(grad_h0_reset);
    dc_state.add_(grad_c0_reset);
  }
  at::Tensor step_norms = norms.result();
  if (record_norms && proj) {
    step_norms = at::cat({output_norms.result(), step_norms.narrow(1, 1, 1)}, 1);
  }
  const auto result = [&](const at::Tensor& t) { return narrowed(t, input); };
  if (!wanted.states) dh_state = dc_state = at::Tensor();
  return {shaped_like_input(result(g.grad_input), input), result(dh_state), result(dc_state),
          result(g.grad_w_ih), result(g.grad_w_hh), result(g.grad_b_ih), result(g.grad_b_hh),
          result(grad_w_hr), step_norms};
}

}  // namespace

TORCH_LIBRARY_IMPL(gatedrnn, CPU, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
}

}  // namespace gatedrnn
