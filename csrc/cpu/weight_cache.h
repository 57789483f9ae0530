#pragma once
// Packed weights kept from one call to the next.
//
// Every op packs its weights into the GEMM kernels' panels (gemm.h). For a whole
// sequence that is a small part of the work; for step-by-step calls (T = 1: seq2seq
// decoders, RL policies, streaming) it was most of it: a 2-layer GRU step with hidden
// size 500 at batch 1 took 7.6 ms against torch.nn's 1.6, 70% of it copying weights.
// So a packing is kept, keyed by the weight, and reused while the weight is unchanged:
// same storage (still alive: the cache holds it weakly), data pointer, sizes, strides,
// dtype and version counter (every in-place change through the tensor, an optimizer step
// or load_state_dict, bumps it); a weight recomputed at every call (a parametrization)
// is a new tensor and misses. A change PyTorch does not count (through `.data`, or
// memory written behind its back) is not seen: gatedrnn.empty_weight_cache() drops every
// packing. GATEDRNN_WEIGHT_CACHE_MB (default 256) bounds what it holds; 0 turns it off.
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

namespace gatedrnn {

// A packing and its size in bytes.
using Packing = std::pair<std::shared_ptr<const void>, int64_t>;

// The packing of w that make() builds, from the cache when an earlier call built it for
// the same weight (see above) and the same `params` (what else it depends on: a tag for
// the kind of packing first, then its parameters).
std::shared_ptr<const void> cached_packing(const at::Tensor& w, std::vector<int64_t> params,
                                           const std::function<Packing()>& make);

template <typename T, typename Make>
std::shared_ptr<const T> cached_packing_of(const at::Tensor& w, std::vector<int64_t> params,
                                           const Make& make) {
  return std::static_pointer_cast<const T>(cached_packing(w, std::move(params), [&]() {
    std::shared_ptr<const T> made = make();
    return Packing{made, made->bytes()};
  }));
}

int64_t weight_cache_bytes();
void empty_weight_cache();

}  // namespace gatedrnn
