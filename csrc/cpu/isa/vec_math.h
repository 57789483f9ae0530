#pragma once
// Vectorized building blocks of the fused per-step pointwise passes.
// Each cell writes its math once as a template over V, which is either
// at::vec::Vectorized<scalar_t> (the body of a row) or used with partial
// loads/stores for the tail, so scalar and vector paths cannot drift apart.
//
// Only for the files of csrc/cpu/isa/, which setup.py compiles once per ISA with
// CPU_CAPABILITY set (DEFAULT, AVX2, AVX512): everything here is in the namespace of that
// ISA, as ATen's Vectorized is, so no function compiled for one ISA can stand in for
// another's at link time (see tests/test_cpu_capability.py).
#ifndef CPU_CAPABILITY
#error "vec_math.h is for csrc/cpu/isa/*.cpp, which setup.py compiles once per ISA"
#endif
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace gatedrnn {
namespace CPU_CAPABILITY {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// exp(x) for x <= 0 (or NaN), the only arguments the activations below need: the
// result is in [0, 1], so there is no overflow to handle.
template <typename scalar_t>
inline Vec<scalar_t> exp_nonpositive(const Vec<scalar_t>& x) {
  return x.exp();
}

#if defined(CPU_CAPABILITY_AVX512)
// The steps of exp_nonpositive<float> below, in AVX-512 instructions, with the same
// bits: Vectorized's maximum (NaN-propagating: a compare and an or more), its compares
// (a mask widened to a vector, then narrowed back for a blend) and 2^n built from
// exponent bits (convert, add, shift, multiply) were about half the instructions of an
// LSTM step's pointwise pass. Here max takes NaN from its second operand, compares give
// mask registers, and vscalefps multiplies by 2^n (exact, as the multiply was wherever
// the result is kept). A standalone copy of the LSTM's forward pass at (N, units) = (16,
// 64), one thread: 40 -> 25.5 ns per vector of 16 units, with for_each_chunk's full
// chunks inlined; LSTM (100, 16, 128, 128), 2 threads, back to back: inference 1.97-2.14
// -> 1.91-2.02 ms, training 6.57-7.07 -> 6.50-6.66 (Intel Xeon, family 6 model 167).
C10_ALWAYS_INLINE __m512 exp_nonpositive_avx512(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(
      _mm512_mul_ps(_mm512_max_ps(_mm512_set1_ps(-88.0f), x), _mm512_set1_ps(1.44269504f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f),
                                   _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), x));
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  for (const float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) {
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  }
  // Zero below -87.33, as below; "not less than" is true for NaN, which stays NaN.
  const __mmask16 kept = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33f), _CMP_NLT_UQ);
  return _mm512_maskz_scalef_ps(kept, p, n);
}

#endif

// Inline float version, written once over Vectorized (AVX-512, AVX2 or the portable
// fallback): SLEEF's exp is an out-of-line call, ~10% of a small LSTM step.
// exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 in
// two parts, so r is exact), exp(r) by its Taylor series to r^7 (truncation error below
// 1e-8 relative). Below ln(FLT_MIN) the result is 0; NaN stays NaN.
template <>
inline Vec<float> exp_nonpositive(const Vec<float>& x) {
#if defined(CPU_CAPABILITY_AVX512)
  return exp_nonpositive_avx512(x);
#else
  using at::vec::fmadd;
  using V = Vec<float>;
  using Vi = Vec<int32_t>;
  // Clamped so that n fits an int32 (NaN stays NaN through maximum).
  const V n = (at::vec::maximum(x, V(-88.0f)) * V(1.44269504f)).round();
  const V r = fmadd(n, V(2.12194440e-4f), fmadd(n, V(-0.693359375f), x));
  V p(1.0f / 5040);
  for (const float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) {
    p = fmadd(p, r, V(c));
  }
  // 2^n from its exponent bits; n >= -126 wherever the result is kept.
  const Vi bits = (at::vec::convert_to_int_of_same_size(n) + Vi(127)) << Vi(23);
  const V y = p * at::vec::cast<float>(bits);
  return V::blendv(y, V(0.0f), x < V(-87.33f));
#endif
}

// 1 / (1 + exp(-x)), written as e / (1 + e) for x < 0 with e = exp(-|x|) in (0, 1], so
// exp never overflows. NaN propagates.
template <typename scalar_t>
inline Vec<scalar_t> sigmoid(const Vec<scalar_t>& x) {
  const Vec<scalar_t> one(scalar_t(1));
  const Vec<scalar_t> e = exp_nonpositive(x.abs().neg());
  return Vec<scalar_t>::blendv(e, one, x >= Vec<scalar_t>(scalar_t(0))) / (one + e);
}

#if defined(CPU_CAPABILITY_AVX512)
// The same as above, the same bits (see exp_nonpositive_avx512).
template <>
inline Vec<float> sigmoid(const Vec<float>& x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = exp_nonpositive_avx512(x.abs().neg());  // one andnot, one xor
  const __mmask16 nonnegative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
  return _mm512_div_ps(_mm512_mask_blend_ps(nonnegative, e, one), _mm512_add_ps(one, e));
}
#endif

// tanh(x) = sign(x) * (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1]: no overflow,
// saturates to +-1 and propagates NaN. An exp is several times cheaper than SLEEF's
// tanh or expm1; the price is an absolute (not relative) error of about one ulp of 1
// near x = 0, which is what an RNN state carries anyway.
template <typename scalar_t>
inline Vec<scalar_t> fast_tanh(const Vec<scalar_t>& x) {
  const Vec<scalar_t> one(scalar_t(1));
  const Vec<scalar_t> e = exp_nonpositive(x.abs() * Vec<scalar_t>(scalar_t(-2)));
  // (1 - e) / (1 + e) >= 0, so or-ing in x's sign bit copies the sign (copysign is an
  // out-of-line SLEEF call).
  return ((one - e) / (one + e)) | (x & Vec<scalar_t>(scalar_t(-0.0)));
}

#if defined(CPU_CAPABILITY_AVX512)
// The same as above, the same bits (see exp_nonpositive_avx512).
template <>
inline Vec<float> fast_tanh(const Vec<float>& x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = exp_nonpositive_avx512(x.abs() * Vec<float>(-2.0f));
  const __m512 t = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
  return _mm512_or_ps(t, _mm512_and_ps(x, _mm512_set1_ps(-0.0f)));
}
#endif

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

// count (<= one vector's) bfloat16 or float16 values widened to scalar_t, exactly (every
// such value is a float), zeros past count: a whole vector by ATen's conversion.
template <typename scalar_t, typename narrow_t>
C10_ALWAYS_INLINE Vec<scalar_t> load_widened(const narrow_t* p, int64_t count) {
  constexpr int64_t L = Vec<scalar_t>::size();
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (count == L) {
      Vec<float> v;
      if constexpr (std::is_same_v<narrow_t, c10::Half>) {
        at::vec::load_fp32_from_fp16(p, v);
      } else {
        at::vec::load_fp32_from_bf16(p, v);
      }
      return v;
    }
  }
  alignas(64) scalar_t values[L] = {};
  for (int64_t l = 0; l < count; ++l) values[l] = static_cast<scalar_t>(static_cast<float>(p[l]));
  return Vec<scalar_t>::loadu(values);
}

// A workspace's values, kept as scalar_t, as bfloat16 bits (kept_t uint16_t: the GRU's
// bfloat16 workspace, its loop in float) or as float16 (kept_t c10::Half: the LSTM's
// gates in its bfloat16 workspace), count of them as one vector. The conversions are in
// the pass rather than a pass of their own over a float32 step buffer, and vectorized
// (ATen's widening; the rounding in intrinsics): GCC left the lane loops scalar or in
// 8-lane pieces, and a bfloat16 GRU's training forward took 15% longer than with a
// float32 workspace ((50, 256, 256, 256), AMD Zen 4, 2 threads).
template <typename scalar_t, typename kept_t>
inline Vec<scalar_t> load_kept(const kept_t* p, int64_t count) {
  if constexpr (std::is_same_v<kept_t, scalar_t>) {
    return load(p, count);
  } else if constexpr (std::is_same_v<kept_t, c10::Half>) {
    return load_widened<scalar_t>(p, count);
  } else {
    static_assert(std::is_same_v<kept_t, uint16_t>);
    return load_widened<scalar_t>(reinterpret_cast<const c10::BFloat16*>(p), count);
  }
}

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// Each lane rounded as torch rounds to bfloat16 (c10::detail::round_to_nearest_even: to
// nearest even, denormals kept, a NaN 0x7FC0), in the low 16 bits of its int32 lane (the
// upper ones zero).
inline Vec<int32_t> bf16_rounded_lanes(const Vec<float>& v) {
  using Vi = Vec<int32_t>;
  const Vi bits = at::vec::cast<int32_t>(v);
  // The adds wrap (intrinsics) only for NaNs, which the blend replaces; >> is arithmetic,
  // so the mask keeps the 16 bits a logical shift would leave.
  const Vi rounded = ((bits + Vi(0x7FFF) + ((bits >> Vi(16)) & Vi(1))) >> Vi(16)) & Vi(0xFFFF);
  return Vi::blendv(rounded, Vi(0x7FC0), at::vec::cast<int32_t>(v.isnan()));
}
#endif

#if defined(CPU_CAPABILITY_AVX2)
// The first count (<= 8) 16-bit lanes of `lanes` stored at p.
inline void store_lanes16(__m128i lanes, void* p, int64_t count) {
  if (count == 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), lanes);
  } else {
    uint16_t part[8];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(part), lanes);
    std::memcpy(p, part, count * sizeof(uint16_t));
  }
}
#endif

// v's count lanes rounded to float16 (to nearest even, as c10::Half rounds; F16C's
// VCVTPS2PH on AVX2 and AVX-512).
template <typename scalar_t>
inline void store_half(const Vec<scalar_t>& v, c10::Half* p, int64_t count) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float>) {
    const __mmask16 lanes = count == 16 ? 0xFFFFu : (1u << count) - 1;
    _mm256_mask_storeu_epi16(p, lanes, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    return;
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    store_lanes16(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT), p, count);
    return;
  }
#endif
  scalar_t lanes[Vec<scalar_t>::size()];
  v.store(lanes);
  for (int64_t l = 0; l < count; ++l) p[l] = c10::Half(static_cast<float>(lanes[l]));
}

template <typename scalar_t, typename kept_t>
inline void store_kept(const Vec<scalar_t>& v, kept_t* p, int64_t count) {
  if constexpr (std::is_same_v<kept_t, scalar_t>) {
    store(v, p, count);
  } else if constexpr (std::is_same_v<kept_t, c10::Half>) {
    store_half(v, p, count);
  } else {
    static_assert(std::is_same_v<kept_t, uint16_t>);
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<scalar_t, float>) {
      const __mmask16 lanes = count == 16 ? 0xFFFFu : (1u << count) - 1;
      _mm512_mask_cvtepi32_storeu_epi16(p, lanes, bf16_rounded_lanes(v));
      return;
    }
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<scalar_t, float>) {
      const __m256i kept = bf16_rounded_lanes(v);
      store_lanes16(
          _mm_packus_epi32(_mm256_castsi256_si128(kept), _mm256_extracti128_si256(kept, 1)), p,
          count);
      return;
    }
#endif
    scalar_t lanes[Vec<scalar_t>::size()];
    v.store(lanes);
    for (int64_t l = 0; l < count; ++l) {
      p[l] = c10::detail::round_to_nearest_even(static_cast<float>(lanes[l]));
    }
  }
}

// The sum of v's lanes, in double (the gradient-norm monitor's per-row sums of squares).
template <typename scalar_t>
inline double sum_lanes(const Vec<scalar_t>& v) {
  scalar_t lanes[Vec<scalar_t>::size()];
  v.store(lanes);
  double sum = 0;
  for (int64_t l = 0; l < Vec<scalar_t>::size(); ++l) sum += lanes[l];
  return sum;
}

// Calls body(j, count) over [0, H) in vector-width chunks; the last chunk may
// be partial (count < Vec::size()). The full chunks get their own inlined copy of body,
// where count is the constant Vec::size(): load's and store's tests on it fold away (an
// LSTM pass, with sigmoid and tanh as in AVX-512 above: 33.5 -> 25.5 ns per vector).
template <typename scalar_t, typename F>
C10_ALWAYS_INLINE void for_each_chunk(int64_t H, const F& body) {
  constexpr int64_t W = Vec<scalar_t>::size();
  int64_t j = 0;
  for (; j + W <= H; j += W) body(j, W);
  if (j < H) body(j, H - j);
}

}  // namespace CPU_CAPABILITY
}  // namespace gatedrnn
