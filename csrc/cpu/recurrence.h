#pragma once
// The parts of the forward and backward passes that do not depend on the cell: the
// forward and backward time loops on a thread team (ForwardTeam, BackwardTeam), the
// previous-state gather, and the input and weight gradients made a chunk of steps at a
// time as large GEMMs (ChunkedGrads).
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include "../common/sequence.h"
#include "block_cache.h"
#include "gemm.h"
#include "prev_rows.h"
#include "recurrent_gemm.h"
#include "step_team.h"

namespace gatedrnn {

// A pause in a spin-wait loop.
inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Per-step resets (the modules' forward(..., reset=mask)): before a step, the rows flagged
// restart from the initial state (h0, c0) instead of carrying their sequence's state.
//   flags: [R] one per flat row (like the input's), or null: no resets
struct Resets {
  const bool* flags = nullptr;

  // The flags of step k's rows (processing order), or null (none, or k past the end).
  const bool* of_step(const Schedule& s, int64_t k) const {
    return flags && k < s.steps() ? flags + s.offsets[s.time_at(k)] : nullptr;
  }
  // Whether row b restarts at step k.
  bool at(const Schedule& s, int64_t k, int64_t b) const {
    const bool* r = of_step(s, k);
    return r && b < s.sizes[s.time_at(k)] && r[b];
  }
  // Calls f(b) for each row b that restarts at step k.
  template <typename F>
  void each(const Schedule& s, int64_t k, const F& f) const {
    if (const bool* r = of_step(s, k)) {
      for (int64_t b = 0; b < s.sizes[s.time_at(k)]; ++b) {
        if (r[b]) f(b);
      }
    }
  }
};

// reset: [R] bool on the CPU, or none: the resets of an op's rows.
inline Resets resets_of(const char* op, const std::optional<at::Tensor>& reset,
                        const Schedule& s) {
  if (!reset.has_value() || !reset->defined()) return {};
  TORCH_CHECK_VALUE(reset->scalar_type() == at::kBool && reset->dim() == 1 &&
                        reset->size(0) == s.rows && reset->device().is_cpu(),
                    op, ": expected reset to be a 1-D bool CPU tensor with a flag per input row (",
                    s.rows, "), got ", shape_str(*reset), " ", reset->scalar_type(), " on ",
                    reset->device());
  return {reset->const_data_ptr<bool>()};
}

// The forward: state[b, j0:j0+len] = init[b, j0:j0+len] for the rows b that restart at step
// k (a block's columns: its thread writes them).   state: [N, ld], init: [N, init_ld]
template <typename scalar_t>
void reset_columns(const Resets& r, const Schedule& s, int64_t k, const scalar_t* init,
                   int64_t init_ld, scalar_t* state, int64_t ld, int64_t j0, int64_t len) {
  r.each(s, k, [&](int64_t b) {
    std::copy(init + b * init_ld + j0, init + b * init_ld + j0 + len, state + b * ld + j0);
  });
}

// The backward: the gradient w.r.t. the state that entered step k, of rows that restarted
// there, is the initial state's: moved from grad[b, j0:j0+len] to grad_init.
//   grad, grad_init: [N, ld]
template <typename scalar_t>
void move_reset_columns(const Resets& r, const Schedule& s, int64_t k, scalar_t* grad,
                        scalar_t* grad_init, int64_t ld, int64_t j0, int64_t len) {
  r.each(s, k, [&](int64_t b) {
    for (int64_t j = j0; j < j0 + len; ++j) {
      grad_init[b * ld + j] += grad[b * ld + j];
      grad[b * ld + j] = scalar_t(0);
    }
  });
}

// One step of a ForwardTeam loop, as one block of units sees it.
template <typename scalar_t>
struct TeamStep {
  int64_t k, n, off;      // step k (processing order), its live rows n, its first row
  scalar_t* gates;        // [n, G] (leading dim G): x @ w_ih^T for the step's rows; block b
                          // owns columns [gates * begin(b), gates * (begin(b) + len))
  const scalar_t* cur;    // [N, P] the state before the step (read by every block)
  scalar_t* next;         // [N, P] the state after it (each block writes its columns)
};

// A time loop's output [R, P]: in the loop's dtype, or, for a bfloat16 op where the
// bfloat16 kernels run (direct), in bfloat16 as its steps make it: a block's kernel writes
// its h to the next state only, and finish rounds those columns into the output rows,
// still in cache (a float32 output, its pages and its copy at the end were a tenth of a
// bfloat16 LSTM (100, 64, 512, 512) inference call). The same bits as rounding at the end.
inline at::Tensor step_output(const at::Tensor& input, bool direct, int64_t rows, int64_t P,
                              const at::TensorOptions& opts) {
  if (direct && is_bf16(input) && gemm_bf16_kernels() != nullptr) {
    return cached_empty({rows, P}, opts.dtype(at::kBFloat16));
  }
  return cached_empty({rows, P}, opts);
}
template <typename scalar_t>
class StepOutput {
 public:
  //   out: [R, P] (step_output); h0: [N, P], the op's; h_n: [N, P] bfloat16 for the state
  //   after the last step where it is that step's output rows (final_in_output), or none
  StepOutput(at::Tensor& out, const Schedule& s, const Resets& resets, const at::Tensor& h0,
             const at::Tensor& h_n = at::Tensor())
      : bits_(is_bf16(out) ? reinterpret_cast<uint16_t*>(out.mutable_data_ptr()) : nullptr),
        // by dtype, not by bits_: an empty output (a batch of 0) has no data pointer
        wide_(is_bf16(out) ? nullptr : out.mutable_data_ptr<scalar_t>()),
        h0_bits_(bits_ && is_bf16(h0) && h0.is_contiguous()
                     ? reinterpret_cast<const uint16_t*>(h0.const_data_ptr())
                     : nullptr),
        final_bits_(h_n.defined() ? reinterpret_cast<uint16_t*>(h_n.mutable_data_ptr())
                                  : nullptr),
        P_(out.size(1)), s_(s), resets_(resets.flags != nullptr) {}
  // Whether a bfloat16 output's rows of the last step are the final state of every row
  // (that step has them all; no reset follows it): h_n is then rounded from them in
  // finish, while they are in the cache of the thread that made them.
  static bool final_in_output(const at::Tensor& out, const Schedule& s) {
    return is_bf16(out) && s.steps() > 0 && s.sizes[s.time_at(s.steps() - 1)] == s.batch;
  }
  // C_b[:n] = state[:n] @ W_b^T + beta * C_b[:n] for step st, the state read as bfloat16
  // where a bfloat16 op has it so: the first step's from its h0, a later one's from the
  // previous step's output rows where they hold it (no resets, and that step had the
  // rows). The bfloat16 kernels round st.cur to those bits anyway (denormals aside, which
  // their products flush). Each thread's bfloat16 copy of st.cur at every step, and of x's
  // chunks (now read in place where the AMX kernels can: run_bf16), took bfloat16
  // inference at (100, 64, 512, 512), back to back: LSTM 22.3-22.8 -> 19.3-20.3 ms, GRU
  // 17.5-17.6 -> 15.6-16.0 (Intel Xeon with AMX).
  void recurrent(const UnitBlockGemm<scalar_t>& w, int64_t b, const TeamStep<scalar_t>& st,
                 scalar_t beta, scalar_t* c, int64_t ldc) const {
    if (bits_ && w.takes_bf16()) {
      if (st.k == 0 && h0_bits_) {
        w.run_bf16(b, st.n, h0_bits_, P_, beta, c, ldc, st.k);
        return;
      }
      if (!resets_ && st.k > 0 && s_.sizes[s_.time_at(st.k - 1)] >= st.n) {
        const int64_t previous = s_.offsets[s_.time_at(st.k - 1)];
        w.run_bf16(b, st.n, bits_ + previous * P_, P_, beta, c, ldc, st.k);
        return;
      }
    }
    w.run(b, st.n, st.cur, P_, beta, c, ldc, st.k);
  }
  // Where a block's kernel writes the step's h (rows P apart): the output's rows, or the
  // next state.
  scalar_t* rows(const TeamStep<scalar_t>& st) const {
    return bits_ ? st.next : wide_ + st.off * P_;
  }
  // After the block's kernel: its columns [u0, u0 + len) of the step's h into the output.
  void finish(const TeamStep<scalar_t>& st, int64_t u0, int64_t len) const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (!bits_) return;
      const GemmBf16Kernels* bf16 = gemm_bf16_kernels();
      bf16->round_rows(st.next + u0, P_, st.n, len, bits_ + st.off * P_ + u0, P_);
      if (final_bits_ && st.k == s_.steps() - 1) {
        bf16->round_rows(st.next + u0, P_, st.n, len, final_bits_ + u0, P_);
      }
    }
  }

 private:
  uint16_t* bits_;
  scalar_t* wide_;
  const uint16_t* h0_bits_;  // a bfloat16 op's h0, for the first step's product
  uint16_t* final_bits_;     // h_n, made by finish
  int64_t P_;
  const Schedule& s_;
  bool resets_;
};

// h_n of a forward op whose StepOutput makes it (StepOutput::final_in_output): [N, P]
// bfloat16, like h0; else undefined (the op rounds its final state). A one-step bfloat16
// call rounded its float32 final state apart from the output, on the calling thread.
inline at::Tensor final_state_in_output(const at::Tensor& out, const Schedule& s,
                                        const at::Tensor& h0) {
  return StepOutput<float>::final_in_output(out, s) ? cached_empty(h0.sizes(), out.options())
                                                    : at::Tensor();
}

// The forward time loop of every cell, on a team (step_team.h). Each thread owns
// blocks of hidden units and computes their input projection a chunk of steps ahead
// (StepChunks), in its own columns of a small buffer that is still in its cache when
// the steps read it: no thread reads another's columns, so that needs no barrier. The
// state alternates between two [N, P] buffers; each step reads one whole and writes
// its blocks of the other, and one barrier per step orders the threads.
// A shape too small for two blocks runs its steps on one thread; if its whole input
// projection is small too (up to 4 MiB in float32), the other threads make it beside the
// steps, a few steps' rows at a time (run_pipelined), or, in a call of too few steps for
// that, it is one GEMM before the loop, on every thread.
template <typename scalar_t>
class ForwardTeam {
 public:
  //   x: [R, I], w_ih: [gates * H, I] (both the time loop's dtype, or bfloat16 in the
  //   bfloat16 form: read as they are where that is possible), h0: [N, P] the op's
  //   (widened into the first state; a float32 copy kept only for resets); precision: the
  //   input projection's
  //   resets: rows that restart from h0 before a step
  ForwardTeam(const Schedule& s, const at::Tensor& x, const at::Tensor& w_ih, int64_t gates,
              const UnitBlocks& units, const at::Tensor& h0,
              GemmPrecision precision = GemmPrecision::kNative, const Resets& resets = {})
      : s_(s), gates_(gates), G_(w_ih.size(0)), units_(units), resets_(resets),
        h0_wide_(resets.flags ? widened(h0).contiguous() : at::Tensor()),
        h0_(resets.flags ? h0_wide_.const_data_ptr<scalar_t>() : nullptr),
        whole_(units.count() == 1 && s.rows * w_ih.size(0) <= kWholeElements),
        direct_(whole_ && s.rows <= kDirectRows && w_ih.stride(1) == 1),
        w_ih_(whole_ && !direct_ ? PackedWeight<scalar_t>(w_ih, precision)
                                 : PackedWeight<scalar_t>()),
        w_ih_direct_(direct_ ? w_ih : at::Tensor()),
        chunks_(s, w_ih.size(0), whole_),
        input_(whole_ ? UnitBlockGemm<scalar_t>()
                      : UnitBlockGemm<scalar_t>(w_ih, gates, units.units, units,
                                                chunks_.max_rows(), chunks_.count(),
                                                precision)),
        // A bfloat16 x is read as it is by the chunks' GEMMs (the blocks of a thread share
        // one packing of it, UnitBlockGemm::run_bf16), or by the whole input projection
        // (input_rows); a float32 copy of it was a twentieth of a bfloat16 LSTM
        // (100, 64, 512, 512) inference call with its page faults.
        x_bf16_(is_bf16(x) && (whole_ ? !direct_ && w_ih_.bf16() : input_.takes_bf16())),
        x_(x_bf16_ ? x : widened(x)),
        gate_buf_(cached_empty({chunks_.max_rows(), w_ih.size(0)}, loop_options(h0))),
        h_bufs_{at::empty({h0.size(0), h0.size(1)}, loop_options(h0)),
                at::empty({h0.size(0), h0.size(1)}, loop_options(h0))} {
    h_bufs_[slot(0)].copy_(h0);  // a bfloat16 h0 widened as it is copied
  }

  // Options of a tensor in the time loop's dtype.
  static at::TensorOptions loop_options(const at::Tensor& like) {
    return like.options().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  }

  // For each step, on every thread: block(step, b, u0, len) for each block b the thread
  // owns, then finish(member, step), then the barrier. With units_write_state, the
  // blocks write the state's columns of their units and the rows a step leaves (packed
  // sequences) are carried over here, and the rows the next step resets get h0's;
  // otherwise finish writes all of `next` (and resets rows: reset_next).
  // finish_blocks: how many blocks finish splits its own work into (the team gets
  // enough threads for those and for the unit blocks).
  template <typename Block, typename Finish>
  void run(int64_t finish_blocks, bool units_write_state, const Block& block,
           const Finish& finish) {
    const int64_t N = h_bufs_[0].size(0), P = h_bufs_[0].size(1), I = x_.size(1);
    const scalar_t* xp = x_bf16_ ? nullptr : x_.const_data_ptr<scalar_t>();
    const auto* x_bits = x_bf16_ ? reinterpret_cast<const uint16_t*>(x_.const_data_ptr()) : nullptr;
    scalar_t* gp = gate_buf_.mutable_data_ptr<scalar_t>();
    scalar_t* const hb[2] = {h_bufs_[0].mutable_data_ptr<scalar_t>(),
                             h_bufs_[1].mutable_data_ptr<scalar_t>()};
    // Step k of the loop, as its blocks see it.
    const auto step_of = [&](int64_t k, const RowRange& chunk) {
      const int64_t t = s_.time_at(k);
      return TeamStep<scalar_t>{k, s_.sizes[t], s_.offsets[t],
                                gp + (s_.offsets[t] - chunk.begin) * G_, hb[slot(k)],
                                hb[slot(k + 1)]};
    };
    // The blocks of step k that thread `me` owns, then finish and the barrier.
    const auto run_step = [&](const TeamMember& me, const TeamStep<scalar_t>& step) {
      const auto [b0, b1] = me.share(units_.count());
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t u0 = units_.begin(b), len = units_.length(b);
        block(step, b, u0, len);
        if (units_write_state) {
          copy_columns(step.cur, step.next, step.n, N, P, u0, len);
          reset_next(step, u0, len);
        }
      }
      finish(me, step);
      me.barrier();
    };
    if (pipelined(finish_blocks)) {
      run_pipelined(xp, x_bits, I, gp, [&](int64_t k) {
        run_step(TeamMember(0, 1), step_of(k, chunks_.rows_of(k)));
      });
      return;
    }
    if (whole_) {
      // gates[R, G] = x @ w_ih^T: the one block's columns are w_ih's rows in order.
      if (direct_) {
        // One or two rows: w_ih read in place, nothing packed.
        if (is_bf16(w_ih_direct_)) {
          const auto* w = reinterpret_cast<const uint16_t*>(w_ih_direct_.const_data_ptr());
          gemm_kernels<scalar_t>().dot_bf16(s_.rows, G_, I, xp, I, w, w_ih_direct_.stride(0),
                                            scalar_t(0), gp, G_);
        } else {
          gemm_kernels<scalar_t>().dot(s_.rows, G_, I, xp, I,
                                       w_ih_direct_.const_data_ptr<scalar_t>(),
                                       w_ih_direct_.stride(0), scalar_t(0), gp, G_);
        }
      } else if (x_bf16_) {
        const int64_t mb = gemm_blocks(s_.rows, G_, I).mb;
        at::parallel_for(0, ceil_div(s_.rows, mb), 1, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            input_rows(b * mb, std::min(mb, s_.rows - b * mb), xp, x_bits, I, gp);
          }
        });
      } else {
        parallel_gemm<scalar_t>(s_.rows, G_, I, GemmA<scalar_t>::rows(xp, I), w_ih_.b(),
                                scalar_t(0), gp, G_);
      }
    }
    run_team(std::max(finish_blocks, units_.count()), [&](const TeamMember& me) {
      const auto [b0, b1] = me.share(units_.count());
      for (int64_t k = 0; k < s_.steps(); ++k) {
        const RowRange chunk = chunks_.rows_of(k);
        if (!whole_ && chunk.first_step == k) {
          for (int64_t b = b0; b < b1; ++b) {
            // gates[chunk, block] = x[chunk] @ w_ih_b^T      [rows, I] x [I, gates len]
            if (x_bf16_) {
              input_.run_bf16(b, chunk.rows(), x_bits + chunk.begin * I, I, scalar_t(0),
                              gp + gates_ * units_.begin(b), G_, k);
            } else {
              input_.run(b, chunk.rows(), xp + chunk.begin * I, I, scalar_t(0),
                         gp + gates_ * units_.begin(b), G_, k);
            }
          }
        }
        run_step(me, step_of(k, chunk));
      }
    });
  }

  // The rows [r0, r0 + m) of gates[R, G] = x @ w_ih^T (whole_, not direct_), on this
  // thread, x in the loop's dtype (xp) or in bfloat16 (x_bits: its rows packed as they are
  // for the bfloat16 kernels, the bits of the products on x widened, which the kernels
  // round A to; the widened copy of x was 800 KiB of a bfloat16 RNN (100, 16, 128, 128)
  // inference call's 2.0 MiB peak, torch.nn's 0.9). Each output is one chain over I
  // whatever the rows, so any cut of R gives the same bits.
  void input_rows(int64_t r0, int64_t m, const scalar_t* xp, const uint16_t* x_bits,
                  int64_t I, scalar_t* gp) const {
    if (x_bits == nullptr) {
      w_ih_.run(m, xp + r0 * I, I, scalar_t(0), gp + r0 * G_, G_);
      return;
    }
    if constexpr (std::is_same_v<scalar_t, float>) {
      const GemmBf16Kernels* kernels = gemm_bf16_kernels();
      const uint16_t* rows = x_bits + r0 * I;
      const bool in_place = bf16_rows_are_packed_a(kernels, I, m, I);
      uint16_t* packed = in_place ? nullptr : bf16_scratch(bf16_packed_a_elements(m, I));
      if (!in_place) kernels->pack_a_bf16(rows, I, m, I, packed);
      w_ih_.run_packed_a(m, in_place ? rows : packed, scalar_t(0), gp + r0 * G_, G_);
    }
  }

  // Whether the loop runs pipelined (run_pipelined): one block of units, so its steps run
  // on one thread, and a whole input projection of at least kPipeChunks chunks.
  bool pipelined(int64_t finish_blocks) const {
    return whole_ && !direct_ && finish_blocks <= 1 && at::get_num_threads() > 1 &&
           !at::in_parallel_region() && ceil_div(s_.steps(), pipe_steps()) >= kPipeChunks;
  }
  // Steps per chunk of the pipelined input projection: kPipeRows rows or more.
  int64_t pipe_steps() const {
    return std::max<int64_t>(1, ceil_div(kPipeRows, std::max<int64_t>(1, s_.batch)));
  }

  // The loop of a single block of units with the whole input projection made beside it:
  // thread 0 runs the steps (step(k)); the input projection is cut into chunks of
  // pipe_steps() steps, which the other threads claim in order and make ahead of it, and
  // thread 0 makes the next unclaimed one while the chunk it needs is not ready. Before,
  // the projection was one parallel GEMM before the loop, and the other thread then
  // waited through the whole loop. The same bits (each output one chain over I); the
  // two forms alternating in one process, medians, ms (AMD EPYC Zen 4, 2 threads): RNN
  // (100, 16, 128, 128) inference 0.93-0.95 -> 0.75-0.76, training 3.31-3.49 ->
  // 3.10-3.13; in bfloat16 0.57-0.58 -> 0.44-0.45 and 1.63-1.66 -> 1.48-1.56; LSTM (200,
  // 1, 64, 64) inference 0.283-0.286 -> 0.265-0.271.
  template <typename Step>
  void run_pipelined(const scalar_t* xp, const uint16_t* x_bits, int64_t I, scalar_t* gp,
                     const Step& step) {
    const int64_t per = pipe_steps(), count = ceil_div(s_.steps(), per);
    std::atomic<int64_t> next{0};
    std::unique_ptr<std::atomic<bool>[]> made(new std::atomic<bool>[count]);
    for (int64_t c = 0; c < count; ++c) made[c].store(false, std::memory_order_relaxed);
    // Claims the next chunk and makes it; false when none is left.
    const auto make_next = [&]() {
      const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= count) return false;
      const int64_t k0 = c * per, k1 = std::min(k0 + per, s_.steps()) - 1;
      const int64_t t0 = std::min(s_.time_at(k0), s_.time_at(k1));
      const int64_t t1 = std::max(s_.time_at(k0), s_.time_at(k1));
      const int64_t r0 = s_.offsets[t0], r1 = s_.offsets[t1] + s_.sizes[t1];
      input_rows(r0, r1 - r0, xp, x_bits, I, gp);
      made[c].store(true, std::memory_order_release);
      return true;
    };
    run_team(std::min(count, kPipeThreads), [&](const TeamMember& me) {
      if (me.id() != 0) {
        while (make_next()) {
        }
        return;
      }
      for (int64_t k = 0; k < s_.steps(); ++k) {
        while (!made[k / per].load(std::memory_order_acquire)) {
          if (!make_next()) spin_pause();
        }
        step(k);
      }
    });
  }

  // The state after the last step: the first of the two, which the ops return as it is.
  // Copying it out, with the op's clone of h0 for the state it replaced, took 3-4% of a
  // one-step call: LSTM, 2 layers, (N, H) = (64, 256), under no_grad, medians of
  // alternating builds, 676-720 -> 649-676 us. The two are separate allocations, so the
  // state keeps only its own alive: as two halves of one [2, N, P] tensor, a model's loop
  // of cells, which hands each step's state on to the next step (whose backward keeps it),
  // kept both (bench.py's cells-n64-h512 training peak, RNNCell, 28.3 -> 23.8 MiB), and,
  // the state being a view, autograd refused to let it be modified in place, which
  // torch.nn's LSTMCell and GRUCell allow.
  at::Tensor final_state() const { return h_bufs_[slot(s_.steps())]; }

  // next[b, j0:j0+len] = h0[b, j0:j0+len] for the rows b that restart at the step after.
  void reset_next(const TeamStep<scalar_t>& step, int64_t j0, int64_t len) const {
    const int64_t P = h_bufs_[0].size(1);
    reset_columns(resets_, s_, step.k + 1, h0_, P, step.next, P, j0, len);
  }

 private:
  const Schedule& s_;
  int64_t gates_, G_;
  UnitBlocks units_;
  Resets resets_;
  at::Tensor h0_wide_;   // h0 in the loop's dtype, for resets
  const scalar_t* h0_;   // its data, or null
  static constexpr int64_t kWholeElements = int64_t(1) << 20;
  // The pipelined projection's chunks: at least kPipeRows rows (whole steps), at least
  // kPipeChunks of them, made by up to kPipeThreads - 1 threads beside the steps'.
  static constexpr int64_t kPipeRows = 32, kPipeChunks = 4, kPipeThreads = 8;

  // Which of h_bufs_' two states holds the state before step k: they alternate, and the
  // state after the last step is the first.
  int64_t slot(int64_t k) const { return (k + s_.steps()) % 2; }

  bool whole_;  // one block: the input projection is made whole, before or beside the loop
  bool direct_;                    // whole_ with one or two rows
  PackedWeight<scalar_t> w_ih_;    // used when whole_ and not direct_
  at::Tensor w_ih_direct_;         // used when direct_
  StepChunks chunks_;
  UnitBlockGemm<scalar_t> input_;  // by blocks, chunk by chunk, otherwise
  bool x_bf16_;                    // x_ in bfloat16, for input_.run_bf16
  at::Tensor x_;                   // x, or its float32 copy
  at::Tensor gate_buf_;
  at::Tensor h_bufs_[2];
};

// Which gradients a backward op makes: its output_mask (the input's; the initial states';
// the parameters'), which autograd sets from what needs one. The others are not computed
// and come back as [0] tensors. A decoder step whose state is detached needs no grad_h0:
// its product dh0 = dgates @ w_hh was a quarter of a one-step backward's products. A
// first layer over data, or frozen weights, need no grad_input or weight gradients.
struct GradsWanted {
  bool input = true, states = true, weights = true;
  static GradsWanted of(const std::array<bool, 3>& output_mask) {
    return {output_mask[0], output_mask[1], output_mask[2]};
  }
};

// What a backward op returns for a gradient not asked for (GradsWanted).
inline at::Tensor not_wanted(const at::Tensor& input) { return at::empty({0}, input.options()); }

// The ops' bfloat16 form. Arguments and results in bfloat16 (the workspace, read only by
// the backward op, in float32); inside, the float32 time loops on float32 copies of the
// arguments, whose GEMMs round their operands to bfloat16 and accumulate in float32
// (GemmPrecision::kBf16), as oneDNN's bfloat16 RNNs (torch.nn's) do, while the gate math,
// the states between steps and the LSTM cell state stay in float32.
inline GemmPrecision precision_of(const at::Tensor& input) {
  return is_bf16(input) ? GemmPrecision::kBf16 : GemmPrecision::kNative;
}
inline std::optional<at::Tensor> widened(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return t;
  return widened(*t);
}
// A result in the op's dtype (that of input). A float32 result of a bfloat16 op is rounded
// as Tensor.to rounds (gemm_bf16.cpp's round_rows), rows split over the threads, into a
// block of the cache: through Tensor.to, a one-step call's weight gradients were rounded
// on one thread into fresh pages, a quarter of the GRU backward op at (T, N, H) = (1, 1,
// 512) (2 threads: 1432 -> 742 us, the bits unchanged).
// An undefined t (a gradient not wanted): not_wanted.
inline at::Tensor narrowed(const at::Tensor& t, const at::Tensor& input) {
  if (!t.defined()) return not_wanted(input);
  if (t.scalar_type() == input.scalar_type()) return t;
  const GemmBf16Kernels* bf16 = gemm_bf16_kernels();
  if (!is_bf16(input) || t.scalar_type() != at::kFloat || !t.is_contiguous() || bf16 == nullptr) {
    return t.to(input.scalar_type());
  }
  at::Tensor result = cached_empty(t.sizes(), t.options().dtype(at::kBFloat16));
  const int64_t cols = t.dim() == 0 ? 1 : t.size(-1), rows = cols == 0 ? 0 : t.numel() / cols;
  const float* src = t.const_data_ptr<float>();
  auto* dst = reinterpret_cast<uint16_t*>(result.mutable_data_ptr());
  at::parallel_for(0, rows, copy_grain(cols), [&](int64_t r0, int64_t r1) {
    bf16->round_rows(src + r0 * cols, cols, r1 - r0, cols, dst + r0 * cols, cols);
  });
  return result;
}
// The time loop's dtype for this input: float32 in the bfloat16 form, else input's.
inline at::ScalarType loop_dtype(const at::Tensor& input) {
  return is_bf16(input) ? at::kFloat : input.scalar_type();
}
// The dtype of a workspace (what a training forward keeps for the backward): the input's,
// but float32 for a bfloat16 op that does not keep its activations in bfloat16. The GRU's
// kernels round them to bfloat16 as they write (isa/gru.h), the LSTM's do not: rounding
// the LSTM's gates and cell state (test_reduced_precision.py's cases, 4 seeds, float32
// GEMMs, AMD Zen 4) took the gradients' largest error from at most 1.37x torch.nn's to
// 2.87x (a bias gradient, unbatched bidirectional) against issue 17's bound of 2x; the
// GRU's went from 1.29x to 1.40x (10 seeds). The LSTM keeps its gates as float16 inside
// its float32 workspace instead (isa/lstm.h, lstm_gate_columns). The same on every
// machine: the fake kernels' output metadata (ops/_common.py's workspace_like) must not
// depend on the CPU or GATEDRNN_CPU_BF16, for Inductor's FX graph cache keys omit it
// (pytorch/pytorch#160472).
inline at::ScalarType workspace_dtype(const at::Tensor& input, bool rounded) {
  return is_bf16(input) && !rounded ? at::kFloat : input.scalar_type();
}
inline void check_workspace_dtype(const char* op, const at::Tensor& input,
                                  const at::Tensor& workspace, bool rounded) {
  const at::ScalarType expected = workspace_dtype(input, rounded);
  TORCH_CHECK(workspace.scalar_type() == expected, op, ": expected workspace to have dtype ",
              expected, " (the forward op's for input of dtype ", input.scalar_type(),
              "), got ", workspace.scalar_type());
}

// b_ih + b_hh as one vector (zeros where absent), so the pointwise pass adds one bias.
inline at::Tensor combined_bias(const std::optional<at::Tensor>& b_ih,
                                const std::optional<at::Tensor>& b_hh, int64_t size,
                                const at::TensorOptions& opts) {
  at::Tensor bias = at::zeros({size}, opts);
  if (b_ih.has_value() && b_ih->defined()) bias.add_(*b_ih);
  if (b_hh.has_value() && b_hh->defined()) bias.add_(*b_hh);
  return bias;
}

inline at::Tensor optional_bias(const std::optional<at::Tensor>& b, int64_t size,
                                const at::TensorOptions& opts) {
  return (b.has_value() && b->defined()) ? b->contiguous() : at::zeros({size}, opts);
}

// seq: [R, seq_ld] per-row states of every step, init: [N, init_ld].
template <typename scalar_t>
PrevRows<scalar_t> previous_rows(const Schedule& s, int64_t k, const scalar_t* seq,
                                 int64_t seq_ld, const scalar_t* init, int64_t init_ld,
                                 const Resets& resets = {}) {
  PrevRows<scalar_t> p;
  p.init = init;
  p.init_ld = init_ld;
  p.reset = resets.of_step(s, k);
  if (k > 0) {
    const int64_t tp = s.time_at(k - 1);
    p.from_seq = std::min(s.sizes[s.time_at(k)], s.sizes[tp]);
    p.seq = seq + s.offsets[tp] * seq_ld;
    p.seq_ld = seq_ld;
  }
  return p;
}

// The gradient-norm monitor (gatedrnn.grad_norms): for each step, the sums of squares of
// the gradients reaching its state (`kinds` of them: h, and c for the LSTMs), kept in
// `parts` entries per step that the threads fill without sharing any (a block of units
// each in the plain loops, a row each in the row-wise ones) and added in one fixed order
// after the loop: the sums do not depend on the thread count.
class StepNorms {
 public:
  StepNorms(bool on, int64_t steps, int64_t parts, int64_t kinds)
      : parts_(parts), kinds_(kinds),
        sums_(on ? at::zeros({steps, parts, kinds}, at::kDouble) : at::Tensor()) {}

  // The entries of part p of the step at time t, or null when the monitor is off.
  double* at(int64_t t, int64_t p) {
    return sums_.defined() ? sums_.mutable_data_ptr<double>() + (t * parts_ + p) * kinds_
                           : nullptr;
  }

  // [steps, kinds] the sums per step (in time order); [0, kinds] when off.
  at::Tensor result() const {
    if (!sums_.defined()) return at::zeros({0, kinds_}, at::kDouble);
    const int64_t steps = sums_.size(0);
    at::Tensor out = at::zeros({steps, kinds_}, at::kDouble);
    const double* in = sums_.const_data_ptr<double>();
    double* o = out.mutable_data_ptr<double>();
    for (int64_t t = 0; t < steps; ++t) {
      for (int64_t p = 0; p < parts_; ++p) {
        for (int64_t q = 0; q < kinds_; ++q) o[t * kinds_ + q] += in[(t * parts_ + p) * kinds_ + q];
      }
    }
    return out;
  }

 private:
  int64_t parts_, kinds_;
  at::Tensor sums_;
};

// One product of a GemmSum: op(A)[m, k] @ B[k, n], A stored [k, m] (row-major, leading
// dim lda) when trans_a, else [m, k]; B is [k, n].
template <typename scalar_t>
struct GemmTerm {
  bool trans_a;
  int64_t k;
  const scalar_t* a;
  int64_t lda;
  const scalar_t* b;
  int64_t ldb;
  // Set instead of b: B in bfloat16 (bits), for a kBf16 sum on the bfloat16 kernels.
  const uint16_t* b_bf16 = nullptr;

  GemmA<scalar_t> op_a() const {
    return trans_a ? GemmA<scalar_t>::transposed(a, lda) : GemmA<scalar_t>::rows(a, lda);
  }
};

// C[m, n] = beta * C + the terms, added in their order, with the products of precision.
// c_bf16 set (c null, beta 0, scalar_t float): C is bfloat16, each block made in float32
// in a scratch block and rounded into it (block_output, finish_block).
template <typename scalar_t>
struct GemmSum {
  int64_t m, n;
  scalar_t* c;
  int64_t ldc;
  scalar_t beta;
  std::vector<GemmTerm<scalar_t>> terms;
  GemmPrecision precision = GemmPrecision::kNative;
  uint16_t* c_bf16 = nullptr;
  // Where C lies in a contiguous tensor that autograd adds into a .grad (a weight
  // gradient): the index of C's first element there and the tensor's size; -1 elsewhere.
  int64_t whole_offset = -1, whole_numel = 0;
};

// Where a block of a sum is made: in C, or, for a sum rounded into bfloat16, in float32
// scratch the size of the block, which finish_block rounds into C as narrowed() rounds a
// whole result. A bfloat16 op's one-step weight gradients went to memory in float32,
// whole, and were rounded from there: 6 MiB written and read back per GRU layer at hidden
// size 512, a fifth of the backward. The scratch is the thread's own for blocks of up to
// kThreadScratch bytes (384 KiB for that GRU's, reused while it is in L2; a block of the
// cache for each instead: GRU backward op at (T, N, H) = (1, 64, 512) 1.17 -> 1.29 ms),
// larger blocks' from the cache, so that no thread keeps a large one.
constexpr int64_t kThreadScratch = int64_t(1) << 20;
template <typename scalar_t>
struct BlockOutput {
  scalar_t* c;
  int64_t ldc;
  at::Tensor scratch;  // defined: holds c
};
template <typename scalar_t>
BlockOutput<scalar_t> block_output(const GemmSum<scalar_t>& g, const GemmBlocks::Block& bl) {
  if (g.c_bf16 == nullptr) return {g.c + bl.i0 * g.ldc + bl.j0, g.ldc, at::Tensor()};
  const int64_t elements = bl.mi * bl.ni;
  if (elements * int64_t(sizeof(scalar_t)) <= kThreadScratch) {
    thread_local std::vector<scalar_t> scratch;
    scratch.resize(std::max<size_t>(scratch.size(), elements));
    return {scratch.data(), bl.ni, at::Tensor()};
  }
  const auto dtype = c10::CppTypeToScalarType<scalar_t>::value;
  at::Tensor scratch = cached_empty({bl.mi, bl.ni}, at::TensorOptions().dtype(dtype));
  return {scratch.mutable_data_ptr<scalar_t>(), bl.ni, scratch};
}
template <typename scalar_t>
void finish_block(const GemmSum<scalar_t>& g, const GemmBlocks::Block& bl,
                  const BlockOutput<scalar_t>& out) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (g.c_bf16 == nullptr) return;
    gemm_bf16_kernels()->round_rows(out.c, out.ldc, bl.mi, bl.ni,
                                    g.c_bf16 + bl.i0 * g.ldc + bl.j0, g.ldc);
  }
}

// The last term of a block of a sum rounded into bfloat16 (c_bf16), its A packed by pack_a
// (a), made by the bfloat16 tiles straight into C [m, n] from B packed or read as
// bfloat16 rows, starting from the earlier terms' float32 sums (partial, or null for the
// only term): the bits finish_block gives the float32 block, without rounding it after.
// Whether the kernels can (rounds_in_tiles), then the product (round_in_tiles).
inline bool rounds_in_tiles(const GemmBf16Kernels* bf16, const GemmB<float>& b) {
  if (bf16 == nullptr || b.bf16 == nullptr) return false;
  return (b.bf16_ld > 0 ? bf16->gemm_b_rows_round : bf16->gemm_packed_round) != nullptr;
}
inline void round_in_tiles(const GemmBf16Kernels* bf16, int64_t m, int64_t n, int64_t k,
                           const uint16_t* a, const GemmB<float>& b, const float* partial,
                           int64_t ld_partial, uint16_t* c, int64_t ldc) {
  if (b.bf16_ld > 0) {
    bf16->gemm_b_rows_round(m, n, k, a, b.bf16, b.bf16_ld, partial, ld_partial, c, ldc);
  } else {
    bf16->gemm_packed_round(m, n, k, a, b.bf16, b.bf16_panel, partial, ld_partial, c, ldc);
  }
}

// A kBf16 sum of products too few to pay for packing its B for the bfloat16 kernels: one
// or two rows of A (a one-step call's input gradient at batch 1 or 2, against a whole
// weight) or one or two steps of k (that call's weight gradients, outer products). Run on
// B in place instead, in float32 (a bfloat16 B widened as it is read), as the recurrent
// GEMM runs steps of one or two rows (UnitBlockGemm): exact products of the bfloat16 B
// and the float32 A, unrounded. bfloat16 GRU backward op, (T, N, H) = (1, 1, 512), 2
// threads: w_ih packed (1.5 MiB) at every call for its one row of input gradient.
template <typename scalar_t>
bool in_place_bf16_sum(const GemmSum<scalar_t>& g) {
  if (bf16_kernels_for<scalar_t>(g.precision) == nullptr) return false;
  int64_t k = 0;
  for (const GemmTerm<scalar_t>& t : g.terms) k += t.k;
  return g.m <= kDirectRows || k <= kDirectRows;
}

// A kBf16 sum of few rows (a one-step call's input gradient: the batch's rows against the
// whole of w_ih) whose B, bfloat16 rows, the bfloat16 kernels read where they are
// (gemm_b_rows) instead of packing them for those rows only: packing w_ih was 4.7% of
// the samples of one-step calls of 2 bfloat16 GRU layers at (N, H) = (64, 512), training
// (AMD Zen 4; their times in gemm_bf16.cpp, gemm_b_rows_avx512). At 128 rows (two steps
// of that batch) both ran alike; more rows read B more often (kBRowsMaxRows).
template <typename scalar_t>
bool b_rows_bf16_sum(const GemmSum<scalar_t>& g) {
  const GemmBf16Kernels* bf16 = bf16_kernels_for<scalar_t>(g.precision);
  if (bf16 == nullptr || bf16->gemm_b_rows == nullptr || g.m > kBRowsMaxRows ||
      g.terms.empty() || in_place_bf16_sum(g)) {
    return false;
  }
  return std::all_of(g.terms.begin(), g.terms.end(),
                     [](const GemmTerm<scalar_t>& t) { return t.b_bf16 != nullptr; });
}

// One term of an in_place_bf16_sum on block bl, into c.
template <typename scalar_t>
void in_place_term(const GemmTerm<scalar_t>& t, const GemmBlocks::Block& bl, scalar_t beta,
                   scalar_t* c, int64_t ldc) {
  const GemmA<scalar_t> a = t.op_a().from_row(bl.i0);
  if (t.b_bf16 != nullptr) {
    gemm_kernels<scalar_t>().gemm_few_rows_bf16(bl.mi, bl.ni, t.k, a.data, a.row, a.step,
                                                t.b_bf16 + bl.j0, t.ldb, beta, c, ldc);
  } else {
    tile_gemm<scalar_t>(bl.mi, bl.ni, t.k, a, GemmB<scalar_t>::rows(t.b, t.ldb).from_column(bl.j0),
                        beta, c, ldc);
  }
}

// run_gemm_sums' blocks in work items, largest first: alone, or grouped with the others
// that read the same rows of the same A, where the kernels would pack that A for each
// (a transposed A, or any A of a bfloat16 sum) and the blocks have one term each: then
// one thread packs it once and runs them all on it (run_shared_a). A weight gradient's
// dg^T is such an A, read by the gradients of w_ih and of w_hh (for the LSTM and the RNN,
// every row of it): packed by each block, it was packed twice per chunk. Training step,
// 2 threads, Intel Xeon with AMX, alternating runs: bfloat16 LSTM (100, 64, 512, 512)
// 113.3-113.5 -> 107.9-108.3 ms; float32 LSTM (100, 16, 128, 128) 6.77-6.96 -> 6.64-6.81;
// float32 LSTM (100, 64, 512, 512) and GRU (100, 16, 128, 128) within noise. Grouped
// items rather than one packing of every shared A before the blocks: that held a packed
// copy of a chunk's dg^T (8 MiB at LSTM (100, 64, 512, 512)) and raised training peaks
// by 2-8 MiB for no more speed.
template <typename scalar_t, typename Block>
std::vector<std::vector<size_t>> shared_a_items(const std::vector<GemmSum<scalar_t>>& sums,
                                                const std::vector<Block>& blocks) {
  using Key = std::tuple<const scalar_t*, int64_t, int64_t, int64_t, int64_t, bool, bool>;
  std::map<Key, size_t> group;  // key -> its item
  std::vector<std::vector<size_t>> items;
  std::vector<double> work;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const GemmSum<scalar_t>& g = sums[blocks[i].sum];
    const bool bf16 = bf16_kernels_for<scalar_t>(g.precision) != nullptr;
    if (g.terms.size() == 1 && g.terms[0].k > 0 && (g.terms[0].trans_a || bf16) &&
        !in_place_bf16_sum(g)) {
      const GemmTerm<scalar_t>& t = g.terms[0];
      const Key key{t.a, t.lda, t.k, blocks[i].c.i0, blocks[i].c.mi, t.trans_a, bf16};
      const auto [it, fresh] = group.try_emplace(key, items.size());
      if (!fresh) {
        items[it->second].push_back(i);
        work[it->second] += blocks[i].work;
        continue;
      }
    }
    items.push_back({i});
    work.push_back(blocks[i].work);
  }
  std::vector<size_t> order(items.size());
  for (size_t q = 0; q < order.size(); ++q) order[q] = q;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return work[x] > work[y]; });
  std::vector<std::vector<size_t>> sorted;
  for (size_t q : order) sorted.push_back(std::move(items[q]));
  return sorted;
}

// The blocks of one shared_a_items group on this thread: their common A packed once, into
// this thread's scratch, then each block's one term on it (the bits of tile_gemm's).
template <typename scalar_t, typename Block, typename BOf>
void run_shared_a(const std::vector<GemmSum<scalar_t>>& sums, const std::vector<Block>& blocks,
                  const std::vector<size_t>& item, const BOf& b_of) {
  const GemmSum<scalar_t>& first = sums[blocks[item[0]].sum];
  const GemmTerm<scalar_t>& t = first.terms[0];
  const GemmBlocks::Block& rows = blocks[item[0]].c;
  const GemmA<scalar_t> a = t.op_a().from_row(rows.i0);
  if (bf16_kernels_for<scalar_t>(first.precision) != nullptr) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      const GemmBf16Kernels* bf16 = gemm_bf16_kernels();
      thread_local std::vector<uint16_t> packed;
      packed.resize(std::max<size_t>(packed.size(), bf16_packed_a_elements(rows.mi, t.k)));
      bf16->pack_a(a.data, a.row, a.step, rows.mi, t.k, packed.data());
      for (size_t i : item) {
        const GemmSum<scalar_t>& g = sums[blocks[i].sum];
        const GemmBlocks::Block& bl = blocks[i].c;
        // packed, or bfloat16 rows read in place (GemmSumsRun)
        const GemmB<scalar_t> b = b_of(i, 0).from_column(bl.j0);
        if (g.c_bf16 != nullptr && rounds_in_tiles(bf16, b)) {
          round_in_tiles(bf16, bl.mi, bl.ni, t.k, packed.data(), b, nullptr, 0,
                         g.c_bf16 + bl.i0 * g.ldc + bl.j0, g.ldc);
          continue;
        }
        const BlockOutput<scalar_t> out = block_output(g, bl);
        if (b.bf16_ld > 0) {
          bf16->gemm_b_rows(bl.mi, bl.ni, t.k, packed.data(), b.bf16, b.bf16_ld, g.beta, out.c,
                            out.ldc);
        } else {
          bf16->gemm_packed_a(bl.mi, bl.ni, t.k, packed.data(), b.bf16, b.bf16_panel, g.beta,
                              out.c, out.ldc);
        }
        finish_block(g, bl, out);
      }
    }
    return;
  }
  const GemmKernels<scalar_t>& kernels = gemm_kernels<scalar_t>();
  thread_local std::vector<scalar_t> packed;
  packed.resize(std::max<size_t>(packed.size(), rows.mi * t.k));
  kernels.pack_a(rows.mi, t.k, a.data, a.row, a.step, packed.data());
  for (size_t i : item) {
    const GemmSum<scalar_t>& g = sums[blocks[i].sum];
    const GemmBlocks::Block& bl = blocks[i].c;
    const GemmB<scalar_t> b = b_of(i, 0).from_column(bl.j0);
    const BlockOutput<scalar_t> out = block_output(g, bl);
    kernels.gemm_packed_a(bl.mi, bl.ni, t.k, packed.data(), b.data, b.ld, b.panel, g.beta,
                          out.c, out.ldc);
    finish_block(g, bl, out);
  }
}

// Computes independent sums (no two write the same C), each cut into the blocks
// gemm_blocks gives for its total k. The blocks of all the sums go to the team's threads,
// largest first, each to whichever thread is free: the sums no longer wait for one
// another, and a sum too small to split runs beside the others instead of leaving
// threads idle (the RNN backward at (T, N, I, H) = (100, 16, 128, 128) has an 8-block
// input gradient and two single-block weight gradients per chunk). A block is the same
// kernel calls whichever thread runs it, so results do not depend on the thread count.
//
// GemmSumsRun prepares the sums (their blocks, B packed where it is shared, the work
// items) and runs one item at a time, on any thread (the pipelined backward's threads
// take a chunk's items as they come free); run_gemm_sums runs them all on a team.
template <typename scalar_t>
class GemmSumsRun {
 public:
  // sums: must outlive the run.
  explicit GemmSumsRun(const std::vector<GemmSum<scalar_t>>& sums) : sums_(sums) {
    b_rows_.resize(sums.size());
    for (size_t s = 0; s < sums.size(); ++s) {
      const GemmSum<scalar_t>& g = sums[s];
      b_rows_[s] = b_rows_bf16_sum(g);
      int64_t k = 0;
      for (const GemmTerm<scalar_t>& t : g.terms) k += t.k;
      if (g.m == 0 || g.n == 0) continue;
      const GemmBlocks gb = gemm_blocks(g.m, g.n, k);
      for (int64_t id = 0; id < gb.count(); ++id) {
        const GemmBlocks::Block c = gb.block(id);
        blocks_.push_back({s, c, gemm_work(c.mi, c.ni, k)});
      }
    }
    std::stable_sort(blocks_.begin(), blocks_.end(),
                     [](const Block& x, const Block& y) { return x.work > y.work; });
    // The bfloat16 kernels' B of every term of a kBf16 sum (but for those of
    // b_rows_bf16_sum, read in place), packed once here for all the sum's blocks: a weight
    // gradient's blocks split its rows, each needing the whole B, and packing it per block
    // was 8 times the work (the LSTM bfloat16 training step).
    packed_.resize(sums.size());
    for (size_t s = 0; s < sums.size(); ++s) {
      const GemmSum<scalar_t>& g = sums[s];
      const GemmBf16Kernels* bf16 = bf16_kernels_for<scalar_t>(g.precision);
      if (bf16 == nullptr || g.m == 0 || g.n == 0 || in_place_bf16_sum(g) || b_rows_[s]) {
        continue;
      }
      for (const GemmTerm<scalar_t>& t : g.terms) {
        const int64_t panel = bf16_panel_elements(t.k), panels = ceil_div(g.n, kBf16PanelWidth);
        at::Tensor p = cached_empty({panels, panel}, at::TensorOptions().dtype(at::kBFloat16));
        uint16_t* dst = reinterpret_cast<uint16_t*>(p.mutable_data_ptr());
        at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t q = p0; q < p1; ++q) {
            const int64_t j0 = q * kBf16PanelWidth, cols = std::min(kBf16PanelWidth, g.n - j0);
            if (t.b_bf16 != nullptr) {
              bf16->pack_b_rows_bf16(t.b_bf16 + j0, t.ldb, t.k, cols, dst + q * panel);
            } else {
              bf16->pack_b_rows(reinterpret_cast<const float*>(t.b) + j0, t.ldb, t.k, cols,
                                dst + q * panel);
            }
          }
        });
        packed_[s].push_back(p);
      }
    }
    // Likewise a native sum cut into several row blocks: each block's GEMM would copy the B
    // columns it reads into panels, the same columns once per row block (4 times for a
    // weight gradient of the LSTM training step at (100, 64, 512, 512)). Training step,
    // medians of 9, same build with and without (Intel Xeon with AMX, 2 threads): LSTM
    // (100, 64, 512, 512) 373-377 -> 343-361 ms, GRU 283-291 -> 267-275, LSTM (1000, 8,
    // 256, 256) 140-144 -> 134-138, LSTM (100, 16, 128, 128) 7.5-7.9 -> 7.4-7.7. Copied
    // by GemmKernels::pack_b (vector loads, rows asked for ahead): as a memmove call per
    // row the copy was 4.8% of the samples of an RNN (100, 64, 512, 512) training step,
    // 1.4% so (AMD Zen 4, 2 threads; the step's time within this VM's noise, minima of
    // alternating builds 97.5-99.0 against 96.9-98.7 ms: the copy overlaps the other
    // thread's steps).
    native_.resize(sums.size());
    const GemmKernels<scalar_t>& kernels = gemm_kernels<scalar_t>();
    const int64_t width = kernels.width;
    for (size_t s = 0; s < sums.size(); ++s) {
      const GemmSum<scalar_t>& g = sums[s];
      if (!packed_[s].empty() || g.m == 0 || g.n == 0 || in_place_bf16_sum(g) || b_rows_[s]) {
        continue;
      }
      int64_t k = 0;
      for (const GemmTerm<scalar_t>& t : g.terms) k += t.k;
      if (gemm_blocks(g.m, g.n, k).rows() <= 1) continue;
      for (const GemmTerm<scalar_t>& t : g.terms) {
        const int64_t panels = ceil_div(g.n, width);
        const auto dtype = c10::CppTypeToScalarType<scalar_t>::value;
        at::Tensor p = cached_empty({panels, t.k, width}, at::TensorOptions().dtype(dtype));
        scalar_t* dst = p.template mutable_data_ptr<scalar_t>();
        at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
          const int64_t j0 = p0 * width;
          kernels.pack_b(std::min(p1 * width, g.n) - j0, t.k, t.b + j0, t.ldb,
                         dst + p0 * t.k * width);
        });
        native_[s].push_back(p);
      }
    }
    for (size_t s = 0; s < sums.size(); ++s) {
      // a bfloat16 C is not read: its sum sets it
      TORCH_INTERNAL_ASSERT(sums[s].c_bf16 == nullptr || sums[s].beta == scalar_t(0),
                            "gatedrnn: a bfloat16 GEMM output added to");
      for (const GemmTerm<scalar_t>& t : sums[s].terms) {
        TORCH_INTERNAL_ASSERT(t.b_bf16 == nullptr || !packed_[s].empty() || sums[s].m == 0 ||
                                  sums[s].n == 0 || in_place_bf16_sum(sums[s]) || b_rows_[s],
                              "gatedrnn: a bfloat16 GEMM operand without the bfloat16 kernels");
        // run_shared_a reads a bfloat16 sum's B packed or as bfloat16 rows
        TORCH_INTERNAL_ASSERT(bf16_kernels_for<scalar_t>(sums[s].precision) == nullptr ||
                                  !packed_[s].empty() || sums[s].m == 0 || sums[s].n == 0 ||
                                  in_place_bf16_sum(sums[s]) || b_rows_[s],
                              "gatedrnn: a bfloat16 sum's B not packed");
      }
    }
    items_ = shared_a_items(sums, blocks_);
  }

  size_t items() const { return items_.size(); }

  // The thread of a team of `threads` that ATen's in-place add of item q's sum into a
  // .grad (autograd's accumulation, at::parallel_for over the elements: equal contiguous
  // chunks, at least GRAIN_SIZE each, chunk t on thread t) reads the item's middle element
  // on; -1 for an item of another sum. run_gemm_sums makes such items there: a weight
  // gradient written by one core and added by the other crossed between them.
  int64_t owner(size_t q, int64_t threads) const {
    const Block& block = blocks_[items_[q][0]];
    const GemmSum<scalar_t>& g = sums_[block.sum];
    if (g.whole_offset < 0 || threads < 2) return -1;
    const GemmBlocks::Block& bl = block.c;
    const int64_t middle =
        g.whole_offset + (bl.i0 + bl.mi / 2) * g.ldc + bl.j0 + bl.ni / 2;
    const int64_t adders = std::min(threads, ceil_div(g.whole_numel, at::internal::GRAIN_SIZE));
    return middle / ceil_div(g.whole_numel, adders);
  }

  // Work item q (< items()): its blocks, on this thread.
  void run_item(size_t q) const {
    const std::vector<GemmSum<scalar_t>>& sums = sums_;
    const auto b_of = [&](size_t i, size_t ti) { return b_of_block(i, ti); };
    if (items_[q].size() > 1) {
      run_shared_a(sums, blocks_, items_[q], b_of);
      return;
    }
    const size_t i = items_[q][0];
    const GemmBlocks::Block& bl = blocks_[i].c;
    const GemmSum<scalar_t>& g = sums[blocks_[i].sum];
    const bool in_place = in_place_bf16_sum(g);
    // the term whose kernel rounds the block into a bfloat16 C (the last), if any
    const size_t rounded = rounding_term(g, i, in_place);
    const bool alone = rounded == 0 && !g.terms.empty();  // no float32 block needed
    const BlockOutput<scalar_t> out = alone ? BlockOutput<scalar_t>{} : block_output(g, bl);
    scalar_t beta = g.beta;
    if (g.terms.empty()) {  // a sum of nothing: C = beta * C
      tile_gemm<scalar_t>(bl.mi, bl.ni, 0, GemmA<scalar_t>::rows(nullptr, 0),
                          GemmB<scalar_t>::rows(nullptr, 0), beta, out.c, out.ldc);
    }
    for (size_t ti = 0; ti < g.terms.size(); ++ti) {
      const GemmTerm<scalar_t>& t = g.terms[ti];
      if (ti == rounded) {
        round_term(g, bl, t, b_of(i, ti), in_place, ti > 0 ? out.c : nullptr, out.ldc);
        return;
      }
      if (in_place) {
        in_place_term(t, bl, beta, out.c, out.ldc);
      } else {
        tile_gemm<scalar_t>(bl.mi, bl.ni, t.k, t.op_a().from_row(bl.i0),
                            b_of(i, ti).from_column(bl.j0), beta, out.c, out.ldc, g.precision);
      }
      beta = scalar_t(1);
    }
    finish_block(g, bl, out);
  }

 private:
  struct Block {
    size_t sum;
    GemmBlocks::Block c;
    double work;
  };

  // The index of the term of block i's sum whose kernel rounds the block into its bfloat16
  // C (the last term), or the number of terms where none does: round_rows on the float32
  // block was 1.7-11.9% of the samples of decoders of two bfloat16 GRUCells at hidden size
  // 512, training (batch 64: the input gradient on w_ih's rows; batch 1: every gradient).
  size_t rounding_term(const GemmSum<scalar_t>& g, size_t i, bool in_place) const {
    const size_t none = g.terms.size();
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (g.c_bf16 == nullptr || g.terms.empty()) return none;
      const size_t last = none - 1;
      if (in_place) return g.terms[last].b_bf16 != nullptr ? last : none;
      return rounds_in_tiles(gemm_bf16_kernels(), b_of_block(i, last)) ? last : none;
    }
    return none;
  }

  // Term t of block bl of sum g into its bfloat16 C, rounded, from partial (the earlier
  // terms' float32 sums, rows ld_partial apart) or zero: rounding_term's.
  void round_term(const GemmSum<scalar_t>& g, const GemmBlocks::Block& bl,
                  const GemmTerm<scalar_t>& t, const GemmB<scalar_t>& b, bool in_place,
                  const scalar_t* partial, int64_t ld_partial) const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      const GemmA<scalar_t> a = t.op_a().from_row(bl.i0);
      uint16_t* c = g.c_bf16 + bl.i0 * g.ldc + bl.j0;
      if (in_place) {
        gemm_kernels<scalar_t>().gemm_few_rows_bf16_round(bl.mi, bl.ni, t.k, a.data, a.row,
                                                          a.step, t.b_bf16 + bl.j0, t.ldb,
                                                          partial, ld_partial, c, g.ldc);
        return;
      }
      const GemmBf16Kernels* bf16 = gemm_bf16_kernels();
      uint16_t* packed = bf16_scratch(bf16_packed_a_elements(bl.mi, t.k));
      bf16->pack_a(a.data, a.row, a.step, bl.mi, t.k, packed);
      round_in_tiles(bf16, bl.mi, bl.ni, t.k, packed, b.from_column(bl.j0), partial,
                     ld_partial, c, g.ldc);
    }
  }

  // Block i's B of term ti: in place, or packed by the constructor.
  GemmB<scalar_t> b_of_block(size_t i, size_t ti) const {
    const GemmTerm<scalar_t>& t = sums_[blocks_[i].sum].terms[ti];
    if (b_rows_[blocks_[i].sum]) {
      return GemmB<scalar_t>{nullptr, 0, 0, 0, t.b_bf16, 0, t.ldb};
    }
    if (!packed_[blocks_[i].sum].empty()) {
      const at::Tensor& p = packed_[blocks_[i].sum][ti];
      const auto* bits = reinterpret_cast<const uint16_t*>(p.const_data_ptr());
      return GemmB<scalar_t>{nullptr, 0, 0, 0, bits, bf16_panel_elements(t.k)};
    }
    if (!native_[blocks_[i].sum].empty()) {
      const int64_t width = gemm_kernels<scalar_t>().width;
      return GemmB<scalar_t>{native_[blocks_[i].sum][ti].template const_data_ptr<scalar_t>(),
                             width, t.k * width, width};
    }
    return GemmB<scalar_t>::rows(t.b, t.ldb);
  }

  const std::vector<GemmSum<scalar_t>>& sums_;
  std::vector<Block> blocks_;
  std::vector<std::vector<at::Tensor>> packed_, native_;
  std::vector<bool> b_rows_;  // per sum: b_rows_bf16_sum
  std::vector<std::vector<size_t>> items_;
};

template <typename scalar_t>
void run_gemm_sums(const std::vector<GemmSum<scalar_t>>& sums) {
  const GemmSumsRun<scalar_t> run(sums);
  // The items by the thread ATen's adds will read them on (GemmSumsRun::owner), the
  // others apart; each list taken in order through its counter: the items of no owner
  // first (largest first, as threads come free), then each thread's own, then, by a
  // thread out of work, the others' (the input gradient at batch 64 is a third of a
  // one-step call's products, in one block). Where each item went to whichever thread was
  // free, decoders called a step at a time, training at batch 1, ran a quarter to a third
  // slower in this VM's states where data crossing between its two vCPUs costs four times
  // as much (results/cpu-amd.md), ms a step: GRU decode-n1-h512 float32 2.08-2.22 ->
  // 1.35-1.52, bfloat16 1.71-1.92 -> 1.27-1.37, GRUCells 1.70-1.79 -> 1.23-1.29, LSTMCells
  // 1.83-2.04 -> 1.42-1.56 (bfloat16, H = 512). In the other state, at batch 64, and for
  // sequences (100 steps, whose weight gradients go on over chunks) the same times.
  const int64_t threads = at::get_num_threads();
  std::vector<std::vector<size_t>> lists(threads + 1);
  for (size_t q = 0; q < run.items(); ++q) {
    const int64_t owner = run.owner(q, threads);
    lists[owner < 0 ? threads : owner].push_back(q);
  }
  std::vector<std::atomic<size_t>> next(lists.size());
  for (auto& n : next) n = 0;
  const auto drain = [&](size_t l) {
    for (size_t i = next[l].fetch_add(1); i < lists[l].size(); i = next[l].fetch_add(1)) {
      run.run_item(lists[l][i]);
    }
  };
  run_team(static_cast<int64_t>(run.items()), [&](const TeamMember& me) {
    drain(threads);
    for (int64_t l = 0; l < threads; ++l) drain((me.id() + l) % threads);
  });
}

struct InputAndWeightGrads {
  at::Tensor grad_input, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh;
};

// Columns [src, src + count) of a gate-gradient row, which belong to rows
// [dst, dst + count) of a weight gradient (and entries of its bias gradient).
struct GateColumns {
  int64_t src, dst, count;
};

// Consecutive steps of the backward order, k_first down to k_last, whose rows (a
// contiguous range, in either direction) are [row_begin, row_end).
struct StepChunk {
  int64_t k_first, k_last, row_begin, row_end;
  int64_t rows() const { return row_end - row_begin; }
};

// The input and weight gradients, made a chunk of steps at a time inside the backward
// loop: the gate gradients then need a buffer of one chunk (~kRows rows) instead of
// the whole sequence, and are still in cache when the GEMMs read them. Chunks depend on
// the shape alone, so the sums do not depend on the thread count.
//   x: [R, I], out: [R, P] the states after each step, h0: [N, P], w_ih: [G*H, I]
//   (x, out and w_ih in the time loop's dtype, or bfloat16 in the bfloat16 form: read as
//   they are by the bfloat16 kernels' packing of B, widened where there are none; h0 the
//   op's as given: widened here, for the loops too (initial_states))
// input_side / hidden_side: which columns of a ld-wide gate-gradient row feed the
// gradients of w_ih, b_ih and of w_hh, b_hh (for LSTM and RNN, all of them; for GRU they
// differ). same_sides: the two lists are equal, so the bias sums are made once.
template <typename scalar_t>
class ChunkedGrads {
 public:
  static constexpr int64_t kRows = 1024;
  // A step of at most kSmallStep multiply-adds in its dh GEMM ([N, G] x [G, P]) is too
  // small for two threads to share: BackwardTeam then runs the time loop on one thread
  // while the others make the chunks' GEMMs (LSTM (100, 16, 128, 128): the loop took
  // 1.70 ms a call on one thread and 1.67-1.97 on two). Its chunks are kSmallStepRows
  // rows, kSlots of them in flight, so that the GEMMs start early. A function of the shape
  // alone, as the chunks must be: they set the order of the weight gradients' sums.
  static constexpr int64_t kSmallStep = int64_t(1) << 20, kSmallStepRows = 256, kSlots = 4;

  // precision: that of the input and weight gradients' products (the bias gradients,
  // plain sums, are made in float32 whatever it is).
  ChunkedGrads(const Schedule& s, int64_t ld, std::vector<GateColumns> input_side,
               std::vector<GateColumns> hidden_side, bool same_sides, const at::Tensor& x,
               const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_ih,
               int64_t gates_h, GemmPrecision precision = GemmPrecision::kNative,
               const Resets& resets = {}, const GradsWanted& wanted = {})
      : s_(s), ld_(ld), input_side_(std::move(input_side)),
        hidden_side_(std::move(hidden_side)), same_sides_(same_sides),
        h0_(widened(h0).contiguous()), resets_(resets), I_(x.size(1)), P_(out.size(1)),
        precision_(precision),
        wanted_(wanted) {
    // With resets, rows restart from h0 anywhere: gathered too.
    uniform_ = !resets_.flags && std::all_of(s.sizes.begin(), s.sizes.end(),
                                             [&](int64_t n) { return n == s.batch; });
    // The first step's states as B of w_hh's gradient where the bfloat16 kernels run: the
    // bfloat16 op's h0 as given (h0_ is it widened, exactly), the bits those kernels round
    // h0_ to. Where the sums run on B in place (batches of 1 or 2, in_place_bf16_sum),
    // their kernel rounds the gradient as it makes it (gemm_few_rows_bf16_round) instead
    // of making it in float32 for round_rows (10% of the samples of a decoder of two
    // bfloat16 GRUCells at (N, H) = (1, 512), training); at larger batches B's packing
    // reads half the bytes and converts none (the same bits: the kernels' rounding of h0_
    // gives these back, and their products flush denormals either way).
    if (std::is_same_v<scalar_t, float> && is_bf16(h0) && uniform_ &&
        precision == GemmPrecision::kBf16 && gemm_bf16_kernels() != nullptr) {
      h0_bits_ = h0.contiguous();
    }
    // bfloat16 operands of B (a bfloat16 op's) are packed as they are by the bfloat16
    // kernels: float32 copies of x and out, both [R, *], were fresh pages at every call
    // (above the block cache's 8 MiB of then, at (100, 64, 512, 512)). Where steps differ,
    // out's rows are gathered a chunk at a time, and widened as they are (gather_h_prev):
    // a float32 copy of the whole out was 7.4 of the 30.3 MiB a bfloat16 RNN training
    // call grew by at the bench's large-packed row (torch.nn's: 21.1).
    const bool bf16 = bf16_kernels_for<scalar_t>(precision) != nullptr;
    w_ih_ = bf16 ? w_ih : widened(w_ih);
    x_ = bf16 ? x : widened(x);
    out_ = bf16 ? out : widened(out);
    small_step_ = double(s.batch) * double(gates_h) * double(P_) <= double(kSmallStep);
    plan(small_step_ ? kSmallStepRows : kRows);
    const auto opts = h0_.options();
    for (const StepChunk& c : chunks_) most_ = std::max(most_, c.rows());
    slots_ = small_step_ ? std::min<int64_t>(kSlots, chunks_.size()) : 1;
    buffer_ = cached_empty({slots_ * most_, ld_}, opts);
    if (!uniform_) h_prev_ = cached_empty({most_, P_}, opts);
    ones_ = at::ones({most_}, opts);
    // Every row is in one chunk, whose first GEMM sets it: no need to clear it first.
    // A bfloat16 op's in bfloat16, each GEMM block rounded as it is made (GemmSum::c_bf16,
    // as torch rounds: gemm_bf16.cpp's round_rows): a float32 [R, I] rounded at the end
    // was the bfloat16 backward's largest buffer after the workspace.
    input_bf16_ = is_bf16(x) && gemm_bf16_kernels() != nullptr && std::is_same_v<scalar_t, float>;
    g_.grad_input = wanted_.input
                        ? cached_empty({s.rows, I_}, input_bf16_ ? x.options() : opts)
                        : at::Tensor();
    // Likewise the weight and bias gradients when the column lists cover every row: the
    // first chunk's sums set them (beta = 0). Clearing them first cost a pass over each
    // weight per call, most of a one-step backward: GRU, hidden size 500, batch 1.
    first_sets_ = !chunks_.empty() && covers(input_side_, gates_h) && covers(hidden_side_, gates_h);
    const auto make = [&](at::IntArrayRef size) {
      return first_sets_ ? cached_empty(size, opts) : cached_zeros(size, opts);
    };
    // A bfloat16 op's weight gradients, when one chunk makes them, in bfloat16 at once,
    // rounded a block at a time (GemmSum::c_bf16) as narrowed() would round them whole.
    // bfloat16 GRU training call of one step, 2 layers, (N, H) = (1, 512): the peak
    // resident set grew by 16.8 MiB over the call, torch.nn's by 7.6.
    weights_bf16_ = input_bf16_ && first_sets_ && chunks_.size() == 1;
    const auto make_weight = [&](at::IntArrayRef size) {
      return weights_bf16_ ? cached_empty(size, x.options()) : make(size);
    };
    if (wanted_.weights) {
      g_.grad_w_ih = make_weight({gates_h, I_});
      g_.grad_w_hh = make_weight({gates_h, P_});
      g_.grad_b_ih = make({gates_h});
      g_.grad_b_hh = make({gates_h});
    }
  }

  // h0 as the time loops read it: [N, P], in their dtype.
  const scalar_t* initial_states() const { return h0_.const_data_ptr<scalar_t>(); }
  // The gate-gradient row of flat row r, which must be in the current chunk.
  scalar_t* row(int64_t r) { return rows_of(current_) + (r - chunk().row_begin) * ld_; }
  const StepChunk& chunk() const { return chunks_[current_]; }
  bool chunks_left() const { return current_ < chunks_.size(); }
  int64_t max_rows() const { return most_; }

  // After the backward steps of the current chunk have written their rows: runs the
  // chunk's GEMMs and moves on to the next chunk.
  void finish_chunk() {
    const std::vector<GemmSum<scalar_t>> sums = sums_of(current_);
    run_gemm_sums(sums);
    ++current_;
  }

  // The pipelined form (BackwardTeam): chunk i's gate-gradient rows are rows_of(i) (the
  // buffer of slot i % slots()), and its GEMMs are sums_of(i), to be run after those of
  // chunk i - 1 and before the loop reuses the slot; done() after the last.
  bool small_step() const { return small_step_; }
  size_t chunk_count() const { return chunks_.size(); }
  const StepChunk& chunk_at(size_t i) const { return chunks_[i]; }
  int64_t slots() const { return slots_; }
  scalar_t* rows_of(size_t i) {
    return buffer_.mutable_data_ptr<scalar_t>() + int64_t(i) % slots_ * most_ * ld_;
  }
  void done() { current_ = chunks_.size(); }

  // Chunk i's GEMMs: grad_input, and grad_w_ih, b_ih, grad_w_hh and b_hh per column
  // range, as independent sums (GemmSumsRun) whose blocks share the threads.
  std::vector<GemmSum<scalar_t>> sums_of(size_t i) {
    const StepChunk& c = chunks_[i];
    const int64_t r0 = c.row_begin, rows = c.rows(), I = I_, P = P_;
    const scalar_t beta = first_sets_ && i == 0 ? scalar_t(0) : scalar_t(1);
    const scalar_t* dg = rows_of(i);
    const scalar_t* ones = ones_.const_data_ptr<scalar_t>();
    std::vector<GemmSum<scalar_t>> sums;
    if (wanted_.input) {
      // grad_input[r0 : r0+rows] = sum over the input side of
      //                            dg[:, cols] @ w_ih[g.dst : g.dst+count]
      GemmSum<scalar_t> input = output_rows(g_.grad_input, r0, rows, input_bf16_, scalar_t(0),
                                                 false);
      for (const GateColumns& g : input_side_) {
        input.terms.push_back(term(false, g.count, dg + g.src, b_rows(w_ih_, g.dst * I), I));
      }
      sums.push_back(std::move(input));
    }
    if (!wanted_.weights) return sums;
    const std::vector<PrevRun> runs = previous_states(c);
    for (const GateColumns& g : input_side_) {
      // grad_w_ih[g.dst : g.dst+count] += dg[:, cols]^T @ x[r0 : r0+rows]
      GemmSum<scalar_t> input_weight =
          output_rows(g_.grad_w_ih, g.dst, g.count, weights_bf16_, beta);
      input_weight.terms.push_back(term(true, rows, dg + g.src, b_rows(x_, r0 * I), I));
      sums.push_back(std::move(input_weight));
      sums.push_back(column_sum(g, rows, dg, ones, g_.grad_b_ih, beta));
    }
    for (const GateColumns& g : hidden_side_) {
      // grad_w_hh[g.dst : g.dst+count] += sum over the runs of dg[run, cols]^T @ h_prev[run]
      GemmSum<scalar_t> hidden = output_rows(g_.grad_w_hh, g.dst, g.count, weights_bf16_, beta);
      for (const PrevRun& run : runs) {
        hidden.terms.push_back(term(true, run.rows, dg + run.first * ld_ + g.src, run.prev, P));
      }
      sums.push_back(std::move(hidden));
      if (!same_sides_) sums.push_back(column_sum(g, rows, dg, ones, g_.grad_b_hh, beta));
    }
    return sums;
  }

  // The gradients, undefined where not wanted.
  InputAndWeightGrads result() {
    if (same_sides_ && wanted_.weights) g_.grad_b_hh = g_.grad_b_ih.clone();
    return g_;
  }

 private:
  void plan(int64_t most) {
    for (int64_t k = s_.steps() - 1; k >= 0;) {
      StepChunk c{k, k, 0, 0};
      int64_t rows = 0;
      while (k >= 0 && (rows == 0 || rows + s_.sizes[s_.time_at(k)] <= most)) {
        rows += s_.sizes[s_.time_at(k)];
        c.k_last = k--;
      }
      const int64_t t0 = std::min(s_.time_at(c.k_first), s_.time_at(c.k_last));
      const int64_t t1 = std::max(s_.time_at(c.k_first), s_.time_at(c.k_last));
      c.row_begin = s_.offsets[t0];
      c.row_end = s_.offsets[t1] + s_.sizes[t1];
      chunks_.push_back(c);
    }
  }

  // A GEMM operand B from an element of a tensor on: as scalar_t, or as bfloat16 bits
  // (one of the two null).
  struct BRows {
    const scalar_t* data = nullptr;
    const uint16_t* bf16 = nullptr;
  };
  // h0 from element `offset` as B: its bfloat16 values where they are kept (h0_bits_).
  BRows first_states(const scalar_t* init, int64_t offset) const {
    return h0_bits_.defined() ? b_rows(h0_bits_, offset) : BRows{init + offset};
  }
  // B from element `offset` of t, which is scalar_t or bfloat16 (read as it is).
  static BRows b_rows(const at::Tensor& t, int64_t offset) {
    if (is_bf16(t)) {
      return {nullptr, reinterpret_cast<const uint16_t*>(t.const_data_ptr()) + offset};
    }
    return {t.const_data_ptr<scalar_t>() + offset};
  }
  // The term op(A) @ B of a sum, A's rows (or columns) ld_ apart: a gate-gradient buffer's.
  GemmTerm<scalar_t> term(bool trans_a, int64_t k, const scalar_t* a, const BRows& b,
                          int64_t ldb) const {
    return {trans_a, k, a, ld_, b.data, ldb, b.bf16};
  }

  // Rows [first, first + rows) of a chunk (relative to its first row), whose previous
  // states are consecutive rows from prev on.
  struct PrevRun {
    int64_t first, rows;
    BRows prev;
  };

  // Whether the column ranges' destinations tile [0, rows) exactly.
  static bool covers(std::vector<GateColumns> side, int64_t rows) {
    std::sort(side.begin(), side.end(),
              [](const GateColumns& x, const GateColumns& y) { return x.dst < y.dst; });
    int64_t next = 0;
    for (const GateColumns& g : side) {
      if (g.dst != next) return false;
      next += g.count;
    }
    return next == rows;
  }

  // The chunk's rows split into runs whose previous states are consecutive rows. When
  // every step has the same rows, those are the neighbouring step's rows of out, or h0
  // for the step that starts the sequence: at most two runs and no copy. Packed steps
  // shrink, so their previous states are gathered into h_prev_.
  std::vector<PrevRun> previous_states(const StepChunk& c) {
    const int64_t rb = c.row_begin, re = c.row_end, N = s_.batch, R = s_.rows, P = P_;
    const scalar_t* init = h0_.const_data_ptr<scalar_t>();
    if (!uniform_) {
      gather_h_prev(c);
      return {{0, c.rows(), b_rows(h_prev_, 0)}};
    }
    std::vector<PrevRun> runs;
    if (!s_.reverse) {
      // rows [0, N) start from h0, row r >= N from row r - N
      if (rb < N) runs.push_back({0, std::min(re, N) - rb, first_states(init, rb * P)});
      const int64_t b = std::max(rb, N);
      if (re > b) runs.push_back({b - rb, re - b, b_rows(out_, (b - N) * P)});
    } else {
      // rows [R - N, R) start from h0, row r < R - N from row r + N
      const int64_t e = std::min(re, R - N);
      if (e > rb) runs.push_back({0, e - rb, b_rows(out_, (rb + N) * P)});
      const int64_t b = std::max(rb, R - N);
      if (re > b) runs.push_back({b - rb, re - b, first_states(init, (b - (R - N)) * P)});
    }
    return runs;
  }

  // The sum of rows [row, row + count) of a gradient t, its terms to come: in scalar_t, or
  // in bfloat16 (bf16, and t bfloat16). weight: t is a weight gradient, which autograd
  // adds into a .grad (GemmSum::whole_offset).
  GemmSum<scalar_t> output_rows(at::Tensor& t, int64_t row, int64_t count, bool bf16,
                                scalar_t beta, bool weight = true) const {
    const int64_t cols = t.size(1);
    GemmSum<scalar_t> sum{count, cols, nullptr, cols, beta, {}, precision_};
    if (weight) {
      sum.whole_offset = row * cols;
      sum.whole_numel = t.numel();
    }
    if (bf16) {
      sum.c_bf16 = reinterpret_cast<uint16_t*>(t.mutable_data_ptr()) + row * cols;
    } else {
      sum.c = t.mutable_data_ptr<scalar_t>() + row * cols;
    }
    return sum;
  }

  // bias[g.dst : g.dst+count] += ones[rows] @ dg[:, cols], a GEMM so that it too is split
  // only across columns.
  GemmSum<scalar_t> column_sum(const GateColumns& g, int64_t rows, const scalar_t* dg,
                               const scalar_t* ones, at::Tensor& bias, scalar_t beta) {
    return {1, g.count, bias.mutable_data_ptr<scalar_t>() + g.dst, g.count, beta,
            {{false, rows, ones, rows, dg + g.src, ld_}}};
  }

  // The state each row of the chunk started from: the same sequence's row at the
  // previously processed step, or h0.
  // (A bfloat16 out's rows widened on the way: the same values as a widened copy's.)
  void gather_h_prev(const StepChunk& c) {
    scalar_t* dst = h_prev_.mutable_data_ptr<scalar_t>();
    const scalar_t* init = h0_.const_data_ptr<scalar_t>();
    const int64_t P = P_;
    // rows [r, r + count) of out into d
    const auto out_rows = [&](scalar_t* d, int64_t r, int64_t count) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (is_bf16(out_)) {
          // a bfloat16's bits are a float's upper half (a loop the compiler vectorizes)
          const auto* src = reinterpret_cast<const uint16_t*>(out_.const_data_ptr()) + r * P;
          auto* bits = reinterpret_cast<uint32_t*>(d);
          for (int64_t i = 0; i < count * P; ++i) bits[i] = uint32_t(src[i]) << 16;
          return;
        }
      }
      std::memcpy(d, out_.const_data_ptr<scalar_t>() + r * P, sizeof(scalar_t) * count * P);
    };
    for (int64_t k = c.k_last; k <= c.k_first; ++k) {
      const int64_t t = s_.time_at(k), n = s_.sizes[t];
      const PrevRows<scalar_t> p = previous_rows<scalar_t>(s_, k, nullptr, 0, init, P, resets_);
      const int64_t seq_row = k > 0 ? s_.offsets[s_.time_at(k - 1)] : 0;
      scalar_t* d = dst + (s_.offsets[t] - c.row_begin) * P;
      for (int64_t b = 0; b < n;) {
        // a run of rows that continue their sequences, or of rows that start from h0
        const bool from_seq = b < p.from_seq && !(p.reset && p.reset[b]);
        int64_t e = b + 1;
        while (e < n && (e < p.from_seq && !(p.reset && p.reset[e])) == from_seq) ++e;
        if (from_seq) {
          out_rows(d + b * P, seq_row + b, e - b);
        } else {
          std::memcpy(d + b * P, init + b * P, sizeof(scalar_t) * (e - b) * P);
        }
        b = e;
      }
    }
  }

  const Schedule& s_;
  int64_t ld_;
  std::vector<GateColumns> input_side_, hidden_side_;
  bool same_sides_;
  at::Tensor h0_;  // widened
  Resets resets_;
  at::Tensor w_ih_, x_, out_;  // as given (bfloat16 read as it is), or widened
  int64_t I_, P_;
  GemmPrecision precision_;
  GradsWanted wanted_;
  std::vector<StepChunk> chunks_;
  size_t current_ = 0;
  at::Tensor h0_bits_;  // the op's bfloat16 h0, for B in place (the constructor)
  bool uniform_ = false;  // every step has all N rows
  bool small_step_ = false;  // a step's dh GEMM too small to share (kSmallStep)
  int64_t most_ = 0, slots_ = 1;  // the most rows of a chunk; chunk buffers
  bool first_sets_ = false;  // the first chunk's sums set the weight gradients
  bool input_bf16_ = false;  // the input gradient made in bfloat16 (a bfloat16 op's)
  bool weights_bf16_ = false;  // the weight gradients too
  at::Tensor buffer_, h_prev_, ones_;
  InputAndWeightGrads g_;
};

// The backward time loop of every cell, on a team: one parallel region per ChunkedGrads
// chunk, whose input and weight gradients are then made between regions, by
// run_gemm_sums. In each step, every thread first runs the pointwise pass of its
// blocks of units, writing their columns of the step's gate gradients; after a barrier
// it computes its blocks' columns of dL/dh_prev = dgates @ w_hh, which reads every gate
// column. No second barrier is needed: the next step's pointwise pass of a block reads
// only the dh columns its own thread wrote.
//
// With an LSTM projection the state (P wide) and the hidden units (H) differ: a first
// phase on the state's blocks turns dh into the gradient of each step's output, which
// the pointwise passes (on blocks of hidden units) all read, so a barrier follows it.
//
// Steps too small to share (ChunkedGrads::small_step) run on one thread instead, beside
// the chunks' GEMMs on the other (run_pipelined).
template <typename scalar_t>
class BackwardTeam {
 public:
  //   w_hh: [G, P], the recurrent weight; dgate_ld: the row length of the gate gradients,
  //   of which the first G columns multiply w_hh; state_units: blocks of the P columns of
  //   dh (and, without a projection, of the pointwise passes); precision: dh's products;
  //   grad_h0: whether dh_state is wanted after the last step (GradsWanted::states): if
  //   not, that step's product is left out, and with it a one-step call's use of w_hh
  BackwardTeam(const Schedule& s, const at::Tensor& w_hh, int64_t dgate_ld,
               const UnitBlocks& state_units, GemmPrecision precision = GemmPrecision::kNative,
               bool grad_h0 = true)
      : s_(s), dgate_ld_(dgate_ld), units_(state_units), grad_h0_(grad_h0) {
    const int64_t products = s.steps() - (grad_h0 ? 0 : 1);
    if (products > 0) {
      hidden_ = UnitBlockGemm<scalar_t>(w_hh.t(), 1, w_hh.size(1), state_units, s.batch,
                                        products, precision);
    }
  }

  // point(k, n, off, dgates, u0, len): step k's pointwise pass over rows [0, n) and units
  // [u0, u0 + len), dgates being the step's [n, dgate_ld] gate-gradient rows. Then
  // dh_state[:n, block] = dgates[:n, :G] @ w_hh[:, block] + beta * dh_state[:n, block].
  template <typename Point>
  void run(ChunkedGrads<scalar_t>& grads, scalar_t* dh_state, scalar_t beta,
           const Point& point) {
    if (grads.small_step() && grads.chunk_count() > 1 && at::get_num_threads() > 1 &&
        !at::in_parallel_region()) {
      run_pipelined(grads, dh_state, beta, point);
      return;
    }
    run_phases(grads, dh_state, beta, units_, point, false,
               [](int64_t, int64_t, int64_t, int64_t, int64_t) {},
               [](const StepChunk&) {});
  }

  // The projected form: before the pointwise passes (on hidden_units), output(k, n, off,
  // j0, len) runs on each block [j0, j0 + len) of the state's columns, then a barrier.
  // after_chunk(chunk) runs after each chunk's input and weight gradients.
  template <typename Point, typename Output, typename AfterChunk>
  void run_projected(ChunkedGrads<scalar_t>& grads, scalar_t* dh_state,
                     const UnitBlocks& hidden_units, const Point& point, const Output& output,
                     const AfterChunk& after_chunk) {
    run_phases(grads, dh_state, scalar_t(0), hidden_units, point, true, output, after_chunk);
  }

 private:
  template <typename Point, typename Output, typename AfterChunk>
  void run_phases(ChunkedGrads<scalar_t>& grads, scalar_t* dh_state, scalar_t beta,
                  const UnitBlocks& point_units, const Point& point, bool with_output,
                  const Output& output, const AfterChunk& after_chunk) {
    const int64_t P = units_.units;
    while (grads.chunks_left()) {
      const StepChunk c = grads.chunk();
      scalar_t* rows = grads.row(c.row_begin);
      run_team(std::max(units_.count(), point_units.count()), [&](const TeamMember& me) {
        const auto [s0, s1] = me.share(units_.count());
        const auto [b0, b1] = me.share(point_units.count());
        for (int64_t k = c.k_first; k >= c.k_last; --k) {
          const int64_t t = s_.time_at(k), n = s_.sizes[t], off = s_.offsets[t];
          scalar_t* dg = rows + (off - c.row_begin) * dgate_ld_;
          if (with_output) {
            for (int64_t b = s0; b < s1; ++b) output(k, n, off, units_.begin(b), units_.length(b));
            me.barrier();
          }
          for (int64_t b = b0; b < b1; ++b) {
            point(k, n, off, dg, point_units.begin(b), point_units.length(b));
          }
          me.barrier();
          // dh_state[:n, block] (+)= dgates[:n, :G] @ w_hh[:, block]   [n, G] x [G, len]
          if (k > 0 || grad_h0_) {
            hidden_.run_blocks(s0, s1, n, dg, dgate_ld_, beta, dh_state, P, k);
          }
        }
      });
      grads.finish_chunk();
      after_chunk(c);
    }
  }

  // The time loop on one thread (member 0) while the others make the GEMMs of the chunks
  // whose steps it has finished, chunk after chunk, a chunk's work items taken by whoever
  // is free: member 0 too, while it waits for a free gate-gradient buffer and after its
  // last step. Chunk i's GEMMs start after all of chunk i - 1's (the weight gradients'
  // sums go on from one chunk to the next). The same blocks, kernel calls and order of
  // every sum as run_phases on the same chunks, so the same bits.
  template <typename Point>
  void run_pipelined(ChunkedGrads<scalar_t>& grads, scalar_t* dh_state, scalar_t beta,
                     const Point& point) {
    const int64_t P = units_.units;
    const size_t chunks = grads.chunk_count(), slots = static_cast<size_t>(grads.slots());
    struct ChunkWork {
      std::vector<GemmSum<scalar_t>> sums;
      std::unique_ptr<GemmSumsRun<scalar_t>> run;
      size_t items = 0;
      std::atomic<int> state{0};  // 0: not prepared, 1: being prepared, 2: ready
      std::atomic<size_t> next{0}, finished{0};
    };
    std::vector<ChunkWork> work(chunks);
    std::atomic<size_t> looped{0}, summed{0};  // chunks whose steps, whose GEMMs are done
    // A chunk's preparation allocates (its packed B): an exception must not leave the
    // parallel region. It ends the GEMMs (summed jumps to the end) and is rethrown after.
    std::exception_ptr error;
    // The current chunk's GEMMs, as far as this thread can take them; false if there was
    // nothing to take (its steps not done yet, or another thread preparing it).
    const auto gemm_pass = [&]() {
      const size_t i = summed.load(std::memory_order_acquire);
      if (i >= chunks || looped.load(std::memory_order_acquire) <= i) return false;
      ChunkWork& w = work[i];
      int idle = 0;
      if (w.state.compare_exchange_strong(idle, 1, std::memory_order_acq_rel)) {
        if (i > 0) {  // every item of chunk i - 1 is done: no thread reads its run now
          work[i - 1].run.reset();
          work[i - 1].sums = {};
        }
        try {
          w.sums = grads.sums_of(i);
          w.run = std::make_unique<GemmSumsRun<scalar_t>>(w.sums);
          w.items = w.run->items();
        } catch (...) {
          error = std::current_exception();
          w.items = 0;
          w.state.store(2, std::memory_order_release);
          summed.store(chunks, std::memory_order_release);
          return true;
        }
        if (w.items == 0) summed.store(i + 1, std::memory_order_release);
        w.state.store(2, std::memory_order_release);
      } else if (w.state.load(std::memory_order_acquire) != 2) {
        return false;
      }
      for (size_t q = w.next.fetch_add(1); q < w.items; q = w.next.fetch_add(1)) {
        w.run->run_item(q);
        if (w.finished.fetch_add(1, std::memory_order_acq_rel) + 1 == w.items) {
          summed.store(i + 1, std::memory_order_release);
        }
      }
      return true;
    };
    const auto work_until = [&](const auto& ready) {
      while (!ready()) {
        if (!gemm_pass()) spin_pause();
      }
    };
    run_team(2, [&](const TeamMember& me) {
      if (me.id() == 0) {
        for (size_t i = 0; i < chunks; ++i) {
          work_until([&] { return i < summed.load(std::memory_order_acquire) + slots; });
          const StepChunk& c = grads.chunk_at(i);
          scalar_t* rows = grads.rows_of(i);
          for (int64_t k = c.k_first; k >= c.k_last; --k) {
            const int64_t t = s_.time_at(k), n = s_.sizes[t], off = s_.offsets[t];
            scalar_t* dg = rows + (off - c.row_begin) * dgate_ld_;
            for (int64_t b = 0; b < units_.count(); ++b) {
              point(k, n, off, dg, units_.begin(b), units_.length(b));
            }
            // dh_state[:n] (+)= dgates[:n, :G] @ w_hh   [n, G] x [G, P]
            if (k > 0 || grad_h0_) {
              hidden_.run_blocks(0, units_.count(), n, dg, dgate_ld_, beta, dh_state, P, k);
            }
          }
          looped.store(i + 1, std::memory_order_release);
        }
      }
      work_until([&] { return summed.load(std::memory_order_acquire) >= chunks; });
    });
    if (error) std::rethrow_exception(error);
    grads.done();
  }

  const Schedule& s_;
  int64_t dgate_ld_;
  UnitBlocks units_;
  bool grad_h0_;
  UnitBlockGemm<scalar_t> hidden_;  // made only where some step runs it
};

// A [T, N, C] or [R, C] tensor as R rows of C elements, row r at keep's data + r * ld:
// scalar_t, or bfloat16 (a bfloat16 op's output or its gradient), read a step at a time
// through at().
template <typename scalar_t>
struct Rows {
  at::Tensor keep;  // owns the data (a view of the argument, or a copy of it)
  int64_t ld;
  at::Tensor step;  // bfloat16 rows: [N, C] float32, a step's rows widened by at()

  // Rows [off, off + n) (one step's, n <= N), of which columns [j0, j0 + len) are read,
  // at the returned pointer with leading dimension step_ld(). Bfloat16 rows are widened
  // into `step`, the columns only: threads widen their own units' columns of a step side
  // by side, and read back only those.
  const scalar_t* at(int64_t off, int64_t n, int64_t j0, int64_t len) const {
    if (!step.defined()) return keep.const_data_ptr<scalar_t>() + off * ld;
    const auto* src = reinterpret_cast<const c10::BFloat16*>(keep.const_data_ptr()) + off * ld;
    scalar_t* dst = step.mutable_data_ptr<scalar_t>();
    const int64_t C = step.size(1);
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t j = j0; j < j0 + len; ++j) {
        dst[b * C + j] = static_cast<float>(src[b * ld + j]);
      }
    }
    return dst;
  }
  int64_t step_ld() const { return step.defined() ? step.size(1) : ld; }
};

// The rows of t without a copy when each is contiguous and they are evenly spaced, as in
// a column slice of a wider tensor: the gradient of one direction of a bidirectional
// layer is one half of the concatenated output's gradient. Otherwise a contiguous copy.
// A bfloat16 t (for a float time loop) is widened step by step (Rows::at), up to batch
// rows at a time: a float32 copy of the whole [R, C] was fresh pages at every call.
template <typename scalar_t>
Rows<scalar_t> strided_rows(const at::Tensor& t, int64_t rows, int64_t cols, int64_t batch) {
  at::Tensor step;
  if (is_bf16(t)) {
    TORCH_INTERNAL_ASSERT((std::is_same_v<scalar_t, float>));
    step = cached_empty({batch, cols}, t.options().dtype(at::kFloat));
  }
  if (rows > 0 && cols > 0 && t.stride(-1) == 1) {
    int64_t ld = t.stride(0);
    bool even = true;
    if (t.dim() == 3) {
      ld = t.size(1) > 1 ? t.stride(1) : t.stride(0);
      even = t.size(0) == 1 || t.stride(0) == t.size(1) * ld;
    }
    if (even && (rows == 1 || ld >= cols)) return {t, rows == 1 ? cols : ld, step};
  }
  return {cached_contiguous(t), cols, step};
}

// previous_rows with the previous step's rows from seq, [R, C], of which columns
// [j0, j0 + len) are read (Rows::at: a bfloat16 seq's widened).
template <typename scalar_t>
PrevRows<scalar_t> previous_rows(const Schedule& s, int64_t k, const Rows<scalar_t>& seq,
                                 int64_t j0, int64_t len, const scalar_t* init, int64_t init_ld,
                                 const Resets& resets = {}) {
  PrevRows<scalar_t> p = previous_rows<scalar_t>(s, k, nullptr, 0, init, init_ld, resets);
  if (k > 0) {
    p.seq = seq.at(s.offsets[s.time_at(k - 1)], p.from_seq, j0, len);
    p.seq_ld = seq.step_ld();
  }
  return p;
}

}  // namespace gatedrnn
