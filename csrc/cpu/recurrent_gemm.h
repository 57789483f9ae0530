#pragma once
// The per-step recurrent GEMM, whose weight is the same at every step: packed into the GEMM
// kernel's panels (gemm.h) once, and kept across calls while the weight is unchanged
// (weight_cache.h). It is cut by the blocks of units of a thread team (step_team.h), one
// packed weight per block.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "gemm.h"
#include "small_batch_gemm.h"
#include "step_team.h"
#include "weight_cache.h"

namespace gatedrnn {

// The packed blocks of a UnitBlockGemm: per block, one of the two is defined.
template <typename scalar_t>
struct UnitBlockPacking {
  std::vector<PackedWeight<scalar_t>> packed;
  std::vector<SmallBatchGemm<scalar_t>> small;
  int64_t bytes() const {
    int64_t total = 0;
    for (const auto& p : packed) total += p.bytes();
    for (const auto& p : small) total += p.bytes();
    return total;
  }
};

// Tags of the packings kept in the weight cache.
enum PackingTag : int64_t { kUnitBlockPacking = 1, kWholePacking = 2 };

// The per-step recurrent GEMM cut by blocks of hidden units: block b
// computes C_b[m, gates * len] = A[m, k] @ W_b^T, where W_b is the rows
// {g * gate_stride + begin(b) + j : g < gates, j < len} of W [rows, k] (the weight rows
// of the block's units for every gate). Batches of up to max_m <=
// SmallBatchGemm::kMaxBatch rows with a small W_b run on SmallBatchGemm instead
// (small_batch_gemm.h).
template <typename scalar_t>
class UnitBlockGemm {
 public:
  UnitBlockGemm() = default;
  // w: [rows, k], any strides (a transposed weight is fine). max_m: the most rows a
  // step will have.
  UnitBlockGemm(const at::Tensor& w, int64_t gates, int64_t gate_stride, UnitBlocks units,
                int64_t max_m)
      : units_(units), gates_(gates), max_m_(max_m), reverse_(units.count(), 0) {
    const int64_t small_m = std::clamp<int64_t>(max_m, 0, SmallBatchGemm<scalar_t>::kMaxBatch + 1);
    packing_ = cached_packing_of<UnitBlockPacking<scalar_t>>(
        w, {kUnitBlockPacking, gates, gate_stride, units.units, units.size, small_m},
        [&]() { return pack(w, gates, gate_stride, units, small_m); });
  }

  // C_b[:m] = A[:m] @ W_b^T + beta * C_b[:m]; c points at C_b's first column.
  // Single-threaded; two threads may run two different blocks at once.
  void run(int64_t b, int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
           int64_t ldc) const {
    if (m == 0 || gates_ * units_.length(b) == 0) return;
    const SmallBatchGemm<scalar_t>& small = packing_->small[b];
    if (small.defined()) {
      TORCH_INTERNAL_ASSERT(m <= max_m_, "gatedrnn: a step of ", m, " rows, above the ",
                            max_m_, " the recurrent GEMM was made for");
      // Each run visits the panels in the order opposite to the last one's.
      small.run(m, a, lda, beta, c, ldc, reverse_[b] != 0);
      reverse_[b] = !reverse_[b];
      return;
    }
    packing_->packed[b].run(m, a, lda, beta, c, ldc);
  }

 private:
  static std::shared_ptr<const UnitBlockPacking<scalar_t>> pack(const at::Tensor& w,
                                                                int64_t gates,
                                                                int64_t gate_stride,
                                                                UnitBlocks units,
                                                                int64_t small_m) {
    auto made = std::make_shared<UnitBlockPacking<scalar_t>>();
    const int64_t k = w.size(1);
    for (int64_t b = 0; b < units.count(); ++b) {
      // W_b: W itself when the one block has every unit, else its rows.
      at::Tensor w_b = w;
      if (units.count() != 1 || gates * gate_stride != w.size(0)) {
        std::vector<at::Tensor> rows;
        for (int64_t g = 0; g < gates; ++g) {
          rows.push_back(w.narrow(0, g * gate_stride + units.begin(b), units.length(b)));
        }
        w_b = at::cat(rows);
      }
      if (SmallBatchGemm<scalar_t>::suits(small_m, w_b.size(0), k)) {
        made->small.emplace_back(w_b);
        made->packed.emplace_back();
      } else {
        made->small.emplace_back();
        made->packed.emplace_back(w_b);
      }
    }
    return made;
  }

  UnitBlocks units_;
  int64_t gates_ = 0, max_m_ = 0;
  std::shared_ptr<const UnitBlockPacking<scalar_t>> packing_;
  // Per block, this call's next visiting order for SmallBatchGemm (a char: vector<bool>
  // packs bits, and two threads write neighbouring blocks).
  mutable std::vector<char> reverse_;
};

// W^T of a whole weight packed for parallel_gemm, kept across calls like the blocks above.
template <typename scalar_t>
std::shared_ptr<const PackedWeight<scalar_t>> packed_whole(const at::Tensor& w) {
  return cached_packing_of<PackedWeight<scalar_t>>(
      w, {kWholePacking}, [&]() { return std::make_shared<const PackedWeight<scalar_t>>(w); });
}

}  // namespace gatedrnn
