#pragma once
// The per-step recurrent GEMM, whose weight is the same at every step. It is cut by the
// blocks of units of a thread team (step_team.h), one weight block per team block, and
// either packed once per call into the GEMM kernel's panels (gemm.h) or read where it is:
// for steps of one or two rows (GemmKernels::dot and the tiles on a B read in place), and
// in calls of a few steps, where the weight's packing would be read too few times to pay
// for itself (GemmKernels::gemm_transposed, against the step's state packed instead; in
// bfloat16 on AVX512_BF16, GemmBf16Kernels::gemm_w_rows on W's rows and gemm_b_rows on
// W^T's, the backward's w_hh). A
// one-step call (T = 1: seq2seq decoders, RL policies, streaming) would otherwise spend
// much of its time packing: a 2-layer GRU step with hidden size 500 at batch 1 took 7.6 ms
// packing every weight, against torch.nn's 1.6.
//
// Packings are not kept from one call to the next. A cache keyed by the weight's storage,
// data pointer and version counter made that GRU call 0.65 ms, but it cannot see writes
// through `.data`, which PyTorch does not count: torch.autograd.gradcheck perturbs inputs
// that way (and failed on stale packings), as do hand-written optimizers.
#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include "gemm.h"
#include "small_batch_gemm.h"
#include "step_team.h"

namespace gatedrnn {

// Steps of up to this many rows read the weight in place.
constexpr int64_t kDirectRows = 2;

// Calls of up to this many steps read the weight in place whatever their rows, where
// their products are float32 (or float64). One LSTM layer at (N, H) = (64, 512), 2
// threads, inference: T = 1 1.55 ms in place against 2.19 packed, T = 8 10.4 against
// 11.8, T = 16 20.5 against 20.8, T = 100 121 against 116; at (16, 128), T = 8 0.45
// against 0.51, T = 16 0.75 against 0.71. A GRU layer's training step (64, 512), T = 1 4.0
// against 5.3 ms, T = 8 27.7 against 29.4. In bfloat16 the AMX kernels on packed
// bfloat16 panels beat float32 in place even at T = 1 (LSTM 1.22 against 1.68 ms).
// (Intel Xeon with AMX, the benchmark machine.)
constexpr int64_t kInPlaceSteps = 8;

// In bfloat16, where the kernels have gemm_w_rows (AVX512_BF16, not AMX), such calls read
// a bfloat16 W in place too, against steps of up to this many rows packed (their panels
// stay in L2 while each tile of W's rows passes them; measured at 64 only), the same bits
// as on W packed: its packing was a quarter of a one-step bfloat16 GRU call at batch 64,
// hidden size 512, under no_grad. One-step calls of 2 layers at batch 64, new / packed
// (same process, alternating, two runs; AMD Zen 4): inference LSTM 0.68-0.85 (H = 512),
// 0.76-1.01 (H = 256), GRU 0.68-0.97; training 0.89-0.98.
constexpr int64_t kWRowsMaxRows = 256;

// Products of up to this many rows read a bfloat16 B's rows in place where the kernels
// have gemm_b_rows (AVX512_BF16): a one-step call's input gradient against w_ih
// (recurrence.h, b_rows_bf16_sum) and its dh against w_hh (UnitBlockGemm on w_hh^T).
constexpr int64_t kBRowsMaxRows = 128;

// The per-step recurrent GEMM cut by blocks of hidden units: block b
// computes C_b[m, gates * len] = A[m, k] @ W_b^T, where W_b is the rows
// {g * gate_stride + begin(b) + j : g < gates, j < len} of W [rows, k] (the weight rows
// of the block's units for every gate).
template <typename scalar_t>
class UnitBlockGemm {
 public:
  UnitBlockGemm() = default;
  // w: [rows, k], any strides (a transposed weight is fine). max_m: the most rows a
  // step will have; steps: how many steps (calls of run per block) the weight serves.
  // precision: that of the packed blocks' products. Steps of one or two rows (W read in
  // place) run in float32 whatever it is: they stream W once per step, as fast in
  // float32, with exact products of bfloat16 values. Calls of a few steps read W in place
  // only where the products are float32 (or float64) anyway.
  UnitBlockGemm(const at::Tensor& w, int64_t gates, int64_t gate_stride, UnitBlocks units,
                int64_t max_m, int64_t steps, GemmPrecision precision = GemmPrecision::kNative)
      : units_(units), gates_(gates), gate_stride_(gate_stride), max_m_(max_m),
        k_(w.size(1)), id_(next_id().fetch_add(1) + 1) {
    // The small-batch kernel sums differently, so it is chosen by the whole weight, not by
    // a block's part of it: blocks depend on the call's steps too (unit_blocks), and the
    // bits should not.
    const bool small = SmallBatchGemm<scalar_t>::suits(max_m, gates * units.units, k_);
    const bool few = max_m <= kDirectRows ||
                     (steps <= kInPlaceSteps && bf16_kernels_for<scalar_t>(precision) == nullptr &&
                      !small);
    if (few && (w.stride(1) == 1 || w.stride(0) == 1)) {
      // In place: rows of W contiguous (dot, or gemm_transposed), or W^T's rows (the
      // tiles on B in place).
      rows_ = w.stride(1) == 1;
      transposed_ = rows_ && max_m > kDirectRows;
      // A bfloat16 W (a bfloat16 op's) is read as it is by dot and, for steps of one or
      // two rows, by the tiles on W^T's rows (gemm_few_rows_bf16), else widened, keeping
      // its layout (W^T's rows contiguous stay so). The backward's w_hh widened at every
      // call: bfloat16 GRU backward op at (T, N, H) = (1, 1, 512), 2 threads, 742 us
      // against 593 read as it is.
      const bool as_is = rows_ ? !transposed_ : max_m <= kDirectRows;
      w_ = as_is ? w : rows_ ? widened(w) : widened(w.t()).t();
      return;
    }
    const GemmBf16Kernels* bf16 = bf16_kernels_for<scalar_t>(precision);
    if (steps <= kInPlaceSteps && max_m <= kWRowsMaxRows && !small && bf16 != nullptr &&
        bf16->gemm_w_rows != nullptr && is_bf16(w) && w.stride(1) == 1) {
      // bfloat16 W's rows in place against the step's rows packed (gemm_w_rows).
      w_ = w;
      rows_ = w_rows_ = true;
      return;
    }
    if (steps <= kInPlaceSteps && max_m <= kBRowsMaxRows && !small && bf16 != nullptr &&
        bf16->gemm_b_rows != nullptr && is_bf16(w) && w.stride(0) == 1) {
      // A bfloat16 W^T's rows (the backward's w_hh, whose W is w_hh^T) in place as the
      // kernels' B, against the step's rows packed (gemm_b_rows), the same bits: w_hh's
      // packing was 1.6% of the samples of a decoder of two bfloat16 RNNCells in training
      // at (N, H) = (64, 512). Such decoders, packed / in place, one process alternating,
      // medians, ms a step: RNNCell 3.41 / 3.28, GRUCell 7.41 / 6.71, LSTMCell 9.41 /
      // 8.94 (AMD Zen 4).
      w_ = w;
      b_rows_ = true;
      return;
    }
    reverse_.assign(units.count(), 0);
    small_.resize(units.count());
    packed_.resize(units.count());
    const auto pack_block = [&](int64_t b) {
      const int64_t begin = units.begin(b), len = units.length(b);
      if (small) {
        // W_b: W itself when the one block has every unit, else its rows.
        at::Tensor w_b = w;
        if (units.count() != 1 || gates * gate_stride != w.size(0)) {
          std::vector<at::Tensor> rows;
          for (int64_t g = 0; g < gates; ++g) {
            rows.push_back(w.narrow(0, g * gate_stride + begin, len));
          }
          w_b = at::cat(rows);
        }
        small_[b] = SmallBatchGemm<scalar_t>(widened(w_b));
      } else {
        // W_b's row j is W's row (j / len) * gate_stride + begin + j % len.
        packed_[b] = PackedWeight<scalar_t>(w, gates * len, [&](int64_t j) {
          return (j / len) * gate_stride + begin + j % len;
        }, precision);
      }
    };
    if (units.count() == 1) {  // packed by every thread (pack_panels)
      pack_block(0);
    } else {
      // Several blocks in one parallel region, each thread a contiguous share of them as
      // in a team (TeamMember::share), so that a block is packed into the cache of the
      // thread that reads it. Each block split over the threads by pack_panels instead
      // left the blocks at hidden size 128 to one thread each (too few panels to split):
      // 2-3% of an LSTM (100, 16, 128, 128) call, one thread packing while the other
      // waited.
      at::parallel_for(0, units.count(), 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) pack_block(b);
      });
    }
    const auto packed_bf16 = [](const PackedWeight<scalar_t>& p) { return p.bf16(); };
    bf16_ = !packed_.empty() && std::all_of(packed_.begin(), packed_.end(), packed_bf16);
  }

  // C_b[:m] = A[:m] @ W_b^T + beta * C_b[:m]; c points at C_b's first column.
  // Single-threaded; two threads may run two different blocks at once. step: the step
  // whose rows A is, when the caller knows it (A then the same at every call with that
  // step), so that the blocks a thread runs in one step share one packing of A where W is
  // read in place; -1: A packed at every call.
  void run(int64_t b, int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
           int64_t ldc, int64_t step = -1) const {
    const int64_t len = units_.length(b);
    if (m == 0 || gates_ * len == 0) return;
    TORCH_INTERNAL_ASSERT(m <= max_m_, "gatedrnn: a step of ", m, " rows, above the ", max_m_,
                          " the recurrent GEMM was made for");
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (b_rows_) {
        for (int64_t g = 0; g < gates_; ++g) {
          b_rows_product(m, g * gate_stride_ + units_.begin(b), len, a, lda, beta, c + g * len,
                         ldc, step);
        }
        return;
      }
      if (w_rows_) {
        w_rows_product(b, m, state_panels(m, a, lda, step), beta, c, ldc);
        return;
      }
    }
    if (w_.defined()) {
      const scalar_t* w = is_bf16(w_) ? nullptr : w_.template const_data_ptr<scalar_t>();
      const scalar_t* a_panels = transposed_ ? packed_state(m, a, lda, step) : nullptr;
      for (int64_t g = 0; g < gates_; ++g) {
        const int64_t row = g * gate_stride_ + units_.begin(b);
        if (transposed_) {
          // C[:, g len : (g+1) len]^T = W[row : row + len] @ A^T
          gemm_kernels<scalar_t>().gemm_transposed(len, m, k_, w + row * w_.stride(0),
                                                   w_.stride(0), a_panels, beta, c + g * len,
                                                   ldc);
        } else if (rows_ && w == nullptr) {
          // C[:, g len : (g+1) len] = A @ W[row : row + len]^T, W in bfloat16
          const auto* bits = reinterpret_cast<const uint16_t*>(w_.const_data_ptr());
          gemm_kernels<scalar_t>().dot_bf16(m, len, k_, a, lda, bits + row * w_.stride(0),
                                            w_.stride(0), beta, c + g * len, ldc);
        } else if (rows_) {
          // C[:, g len : (g+1) len] = A @ W[row : row + len]^T
          gemm_kernels<scalar_t>().dot(m, len, k_, a, lda, w + row * w_.stride(0),
                                       w_.stride(0), beta, c + g * len, ldc);
        } else {
          w_columns(m, row, len, a, lda, beta, c + g * len, ldc);
        }
      }
      return;
    }
    if (small_[b].defined()) {
      // Each run visits the panels in the order opposite to the last one's.
      small_[b].run(m, a, lda, beta, c, ldc, reverse_[b] != 0);
      reverse_[b] = !reverse_[b];
      return;
    }
    if (step >= 0 && packed_[b].bf16()) {
      // The blocks a thread runs in one step share one bfloat16 copy of A: converted per
      // block it was a tenth of a bfloat16 LSTM (100, 64, 512, 512) inference call
      // (four blocks a thread).
      packed_[b].run_packed_a(m, packed_a_bf16(m, a, lda, step), beta, c, ldc);
      return;
    }
    packed_[b].run(m, a, lda, beta, c, ldc);
  }

  // run for the blocks [b0, b1), C_b at c + begin(b). Where W^T is read in place (the
  // backward's dh = dg @ w_hh, one gate) their columns are consecutive, and one product
  // over all of them reads each row of W^T in one run (the same sums: a column's chain
  // does not depend on its neighbours); a block at a time, each row of w_hh was 64
  // columns, 256 bytes, 2 KiB from the previous row's. GRU backward op, (T, N, H) =
  // (1, 1, 512), 2 threads, alternating builds: 374-380 -> 352-354 us.
  void run_blocks(int64_t b0, int64_t b1, int64_t m, const scalar_t* a, int64_t lda,
                  scalar_t beta, scalar_t* c, int64_t ldc, int64_t step = -1) const {
    if (b1 - b0 > 1 && w_.defined() && !rows_ && gates_ == 1 && m > 0) {
      const int64_t j0 = units_.begin(b0), j1 = units_.begin(b1 - 1) + units_.length(b1 - 1);
      if (b_rows_) {
        b_rows_product(m, j0, j1 - j0, a, lda, beta, c + j0, ldc, step);
      } else {
        w_columns(m, j0, j1 - j0, a, lda, beta, c + j0, ldc);
      }
      return;
    }
    for (int64_t b = b0; b < b1; ++b) run(b, m, a, lda, beta, c + units_.begin(b), ldc, step);
  }

  // Whether run_bf16 can run: every block packed for the bfloat16 kernels (decided once,
  // when packed: it is asked per block and step), or W's bfloat16 rows read in place by
  // gemm_w_rows, whose A panels are bfloat16 anyway.
  bool takes_bf16() const { return bf16_ || w_rows_; }

  // run with A in bfloat16 (bits, [m, k] rows lda apart): a bfloat16 op's input, read as
  // it is. Only where takes_bf16(); the same bits as run on A widened (the kernels round
  // a widened A back to these bits, and their products flush denormals either way).
  // W read in place (w_rows_) takes it too: before, its callers widened A (a one-step
  // bfloat16 call's x and h0, ATen copies on the calling thread) for run to pack.
  void run_bf16(int64_t b, int64_t m, const uint16_t* a, int64_t lda, scalar_t beta, scalar_t* c,
                int64_t ldc, int64_t step) const {
    if (m == 0 || units_.length(b) == 0) return;
    TORCH_INTERNAL_ASSERT(takes_bf16() && m <= max_m_, "gatedrnn: run_bf16 on this GEMM");
    if (w_rows_) {
      w_rows_product(b, m, state_panels(m, a, lda, step), beta, c, ldc);
      return;
    }
    const GemmBf16Kernels* kernels = gemm_bf16_kernels();
    const bool in_place = bf16_rows_are_packed_a(kernels, lda, m, k_);
    const auto pack = [&](uint16_t* dst) { kernels->pack_a_bf16(a, lda, m, k_, dst); };
    const uint16_t* packed =
        in_place ? a
                 : scratch_copy<uint16_t>({id_, step, m, a}, bf16_packed_a_elements(m, k_), pack);
    packed_[b].run_packed_a(m, packed, beta, c, ldc);
  }

 private:
  // C[:m, :len] = A[:m] @ W[row : row + len]^T + beta * C with W^T in place (W^T [k, rows]
  // row-major, leading dim stride(1): its columns read where they are), float or bfloat16.
  void w_columns(int64_t m, int64_t row, int64_t len, const scalar_t* a, int64_t lda,
                 scalar_t beta, scalar_t* c, int64_t ldc) const {
    if (is_bf16(w_)) {
      const auto* bits = reinterpret_cast<const uint16_t*>(w_.const_data_ptr());
      gemm_kernels<scalar_t>().gemm_few_rows_bf16(m, len, k_, a, lda, 1,
                                                  bits + row * w_.stride(0), w_.stride(1), beta,
                                                  c, ldc);
      return;
    }
    tile_gemm<scalar_t>(m, len, k_, GemmA<scalar_t>::rows(a, lda),
                        GemmB<scalar_t>::rows(w_.template const_data_ptr<scalar_t>() +
                                                  row * w_.stride(0), w_.stride(1)),
                        beta, c, ldc);
  }

  // The key of a thread's copy of A (packed_state, packed_a_bf16): its object, step, data.
  struct ScratchKey {
    uint64_t owner = 0;
    int64_t step = -1, m = 0;
    const void* a = nullptr;
    bool operator==(const ScratchKey& o) const {
      return owner == o.owner && step == o.step && m == o.m && a == o.a;
    }
  };

  // This thread's copy of A for `key` (size elements, written by pack(dst)): made again
  // unless the thread's last copy at this call site was for the same key. The key's owner
  // is an id no other object gets, since a later call's object may sit at the same
  // address, with the same state buffer. step -1: always made again.
  template <typename T, typename Pack>
  static const T* scratch_copy(const ScratchKey& key, int64_t size, const Pack& pack) {
    struct Scratch {
      ScratchKey key;
      std::vector<T> data;
    };
    thread_local Scratch scratch;
    if (key.step >= 0 && scratch.key == key) return scratch.data.data();
    if (static_cast<int64_t>(scratch.data.size()) < size) scratch.data.resize(size);
    pack(scratch.data.data());
    scratch.key = key;
    return scratch.data.data();
  }

  // C[:m, :len] = bf16(A[:m]) @ W[row : row + len]^T + beta * C, W^T's bfloat16 rows read
  // in place (b_rows_).
  void b_rows_product(int64_t m, int64_t row, int64_t len, const scalar_t* a, int64_t lda,
                      scalar_t beta, scalar_t* c, int64_t ldc, int64_t step) const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      const auto* bits = reinterpret_cast<const uint16_t*>(w_.const_data_ptr());
      gemm_bf16_kernels()->gemm_b_rows(m, len, k_, packed_a_bf16(m, a, lda, step), bits + row,
                                       w_.stride(1), beta, c, ldc);
    }
  }

  // A [m, k] (leading dim lda) packed by the bfloat16 kernels' pack_a.
  const uint16_t* packed_a_bf16(int64_t m, const scalar_t* a, int64_t lda, int64_t step) const {
    return scratch_copy<uint16_t>({id_, step, m, a}, bf16_packed_a_elements(m, k_),
                                  [&](uint16_t* dst) {
                                    if constexpr (std::is_same_v<scalar_t, float>) {
                                      gemm_bf16_kernels()->pack_a(a, lda, 1, m, k_, dst);
                                    }
                                  });
  }

  // C_b[:m] = A @ W_b^T + beta * C_b[:m], W's bfloat16 rows in place (w_rows_), A as the
  // bfloat16 panels of A^T (state_panels).
  void w_rows_product(int64_t b, int64_t m, const uint16_t* panels, scalar_t beta,
                      scalar_t* c, int64_t ldc) const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      const int64_t len = units_.length(b);
      const auto* bits = reinterpret_cast<const uint16_t*>(w_.const_data_ptr());
      for (int64_t g = 0; g < gates_; ++g) {
        const int64_t row = g * gate_stride_ + units_.begin(b);
        // C[:, g len : (g+1) len] = bf16(A) @ W[row : row + len]^T + beta * C
        gemm_bf16_kernels()->gemm_w_rows(m, len, k_, panels, bf16_panel_elements(k_),
                                         bits + row * w_.stride(0), w_.stride(0), beta,
                                         c + g * len, ldc);
      }
    }
  }

  // A [m, k] (leading dim lda) as the bfloat16 panels of A^T (gemm_w_rows' b), from
  // float32 rows or from bfloat16 rows as they are (T uint16_t).
  template <typename T>
  const uint16_t* state_panels(int64_t m, const T* a, int64_t lda, int64_t step) const {
    const int64_t panels = ceil_div(m, kBf16PanelWidth);
    return scratch_copy<uint16_t>({id_, step, m, a}, panels * bf16_panel_elements(k_),
                                  [&](uint16_t* dst) {
                                    const T* rows[kWRowsMaxRows];  // m <= max_m_
                                    for (int64_t r = 0; r < m; ++r) rows[r] = a + r * lda;
                                    const GemmBf16Kernels* bf16 = gemm_bf16_kernels();
                                    if constexpr (std::is_same_v<T, uint16_t>) {
                                      bf16->pack_b_columns_bf16(rows, k_, m, dst);
                                    } else if constexpr (std::is_same_v<T, float>) {
                                      bf16->pack_b_columns(rows, k_, m, dst);
                                    }
                                  });
  }

  // A [m, k] (leading dim lda) as the panels of gemm_transposed's b.
  const scalar_t* packed_state(int64_t m, const scalar_t* a, int64_t lda, int64_t step) const {
    const int64_t width = gemm_kernels<scalar_t>().width, panels = ceil_div(m, width);
    return scratch_copy<scalar_t>({id_, step, m, a}, panels * k_ * width, [&](scalar_t* dst) {
      const scalar_t* rows[64];
      for (int64_t p = 0; p < panels; ++p) {
        const int64_t cols = std::min(width, m - p * width);
        for (int64_t j = 0; j < cols; ++j) rows[j] = a + (p * width + j) * lda;
        pack_panel(rows, cols, 1, k_, width, dst + p * k_ * width);
      }
    });
  }

  static std::atomic<uint64_t>& next_id() {
    static std::atomic<uint64_t> id{0};
    return id;
  }

  UnitBlocks units_;
  int64_t gates_ = 0, gate_stride_ = 0, max_m_ = 0, k_ = 0;
  at::Tensor w_;       // defined: W read in place
  bool rows_ = false;  // W's rows contiguous (else W^T's)
  bool bf16_ = false;  // every block packed for the bfloat16 kernels (takes_bf16)
  bool transposed_ = false;  // rows_ and steps of more rows than dot suits
  bool w_rows_ = false;      // rows_ of a bfloat16 W, for gemm_w_rows
  bool b_rows_ = false;      // W^T's rows of a bfloat16 W, for gemm_b_rows
  uint64_t id_ = 0;  // no other object's: the key of its scratch copies of A
  std::vector<PackedWeight<scalar_t>> packed_;  // W_b^T, per block, where not small_
  std::vector<SmallBatchGemm<scalar_t>> small_;
  // Per block, the next visiting order for SmallBatchGemm (a char: vector<bool> packs
  // bits, and two threads write neighbouring blocks).
  mutable std::vector<char> reverse_;
};

}  // namespace gatedrnn
