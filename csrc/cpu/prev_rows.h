#pragma once
// The rows a step started from, as the backward passes (and csrc/cpu/isa/) read them.
// Plain C++: the per-ISA files include it.
#include <cstdint>

namespace gatedrnn {

// The rows a step started from: the same sequences' rows at the previously
// processed step, or the initial state for rows whose sequence starts at this
// step (all rows at the first step; with packed reverse input, the rows that
// join late). Live rows that continue a sequence always form a prefix, but for those that
// restart from the initial state at this step (per-step resets).
template <typename scalar_t>
struct PrevRows {
  const scalar_t* seq = nullptr;   // row 0 of the previous step
  int64_t seq_ld = 0;
  const scalar_t* init = nullptr;  // row 0 of the initial state
  int64_t init_ld = 0;
  int64_t from_seq = 0;            // rows [0, from_seq) continue a sequence
  const bool* reset = nullptr;     // [n] or null: rows reset to the initial state

  const scalar_t* row(int64_t b) const {
    return b < from_seq && !(reset && reset[b]) ? seq + b * seq_ld : init + b * init_ld;
  }
};

}  // namespace gatedrnn
