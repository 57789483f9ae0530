#pragma once
// Vectorized building blocks of the fused per-step pointwise passes.
// Each cell writes its math once as a template over V, which is either
// at::vec::Vectorized<scalar_t> (the body of a row) or used with partial
// loads/stores for the tail, so scalar and vector paths cannot drift apart.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace gatedrnn {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

template <typename scalar_t>
inline Vec<scalar_t> sigmoid(const Vec<scalar_t>& x) {
  const Vec<scalar_t> one(scalar_t(1));
  return one / (one + x.neg().exp());
}

// tanh(x) = sign(x) * (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1]: no overflow,
// saturates to +-1 and propagates NaN. SLEEF's exp is several times cheaper than its
// tanh or expm1; the price is an absolute (not relative) error of about one ulp of 1
// near x = 0, which is what an RNN state carries anyway.
template <typename scalar_t>
inline Vec<scalar_t> fast_tanh(const Vec<scalar_t>& x) {
  const Vec<scalar_t> one(scalar_t(1));
  const Vec<scalar_t> e = (x.abs() * Vec<scalar_t>(scalar_t(-2))).exp();
  return ((one - e) / (one + e)).copysign(x);
}

template <typename scalar_t>
inline Vec<scalar_t> load(const scalar_t* p, int64_t count) {
  return count == Vec<scalar_t>::size() ? Vec<scalar_t>::loadu(p)
                                        : Vec<scalar_t>::loadu(p, count);
}

template <typename scalar_t>
inline void store(const Vec<scalar_t>& v, scalar_t* p, int64_t count) {
  if (count == Vec<scalar_t>::size()) {
    v.store(p);
  } else {
    v.store(p, count);
  }
}

// Calls body(j, count) over [0, H) in vector-width chunks; the last chunk may
// be partial (count < Vec::size()).
template <typename scalar_t, typename F>
inline void for_each_chunk(int64_t H, const F& body) {
  constexpr int64_t W = Vec<scalar_t>::size();
  for (int64_t j = 0; j < H; j += W) body(j, std::min<int64_t>(W, H - j));
}

// Splits the live rows of a step across threads. Small steps stay on the
// calling thread: a fork/join costs more than the work.
template <typename F>
inline void for_each_row(int64_t rows, int64_t row_cost, const F& body) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(row_cost, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) body(b);
  });
}

}  // namespace gatedrnn
