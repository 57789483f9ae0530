// Our GEMM's micro-kernel for one ISA: setup.py compiles this file once per ISA. A tile of
// R rows by one panel (two vectors) keeps its 2R outputs in registers over a chunk of k:
// per step of k, two loads of B, R broadcasts of A and 2R fused multiply-adds.
// R = 6 with AVX2 (12 accumulators + 2 + 1 of 16 registers), 12 with AVX-512 (24 + 3 of
// 32). The loops over rows are unrolled by pragma: left to GCC 12, the accumulator arrays
// of the 6-row tile went through the stack, 27 GFLOP/s instead of 55-75 on one Zen 3
// core at (m, n, k) = (64, 256-1024, 512).
//
// Each output is one chain: it starts from beta * c (from zero when beta == 0, from c
// itself when beta == 1) and adds a[r, kk] * b[kk, j] for kk = 0, 1, ..., k - 1 by fused
// multiply-adds, in registers throughout: its bits do not depend on the blocking.
// A few rows against a B read in place stream B row by row instead (stream_tile).
//
// k is not cut into chunks that fit L1, as GEMMs usually do (exactly possible: a chunk's
// chain would continue from the value the previous one stored): measured interleaved on
// one Zen 3 core, chunks of 256 made the weight-gradient products 2-6% faster and the
// recurrent steps' 3-7% slower, at (m, n, k) = (64, 256, 2048) and (1024, 512, 2048).
#include "gemm_tiles.h"

#include <c10/macros/Macros.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "vec_math.h"

namespace gatedrnn {
namespace CPU_CAPABILITY {
namespace {

#if defined(CPU_CAPABILITY_AVX512)
constexpr int64_t kTileRows = 12;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int64_t kTileRows = 6;
#else
constexpr int64_t kTileRows = 4;
#endif

// R vectors, not constructed: Vectorized's default constructor zeroes its value, and GCC
// kept that zeroing of a tile's accumulator arrays, as two `rep stos` of 768 bytes into
// stack slots the tile never reads (it keeps the accumulators in registers) per 12-row
// tile. With k = 1 (the weight gradients of a one-step call at batch 1) they were 42% of
// the tile's time.
template <typename V, int64_t R>
union Vectors {
  Vectors() {}
  V v[R];
};

// Rows of A per cache block: the block (rows x k) is reread for every panel of B, so it
// should stay in L2 (512 KiB to 2 MiB per core on the machines this runs on).
constexpr int64_t kBlockBytes = int64_t(256) << 10;

template <typename scalar_t>
int64_t block_rows(int64_t k) {
  const int64_t rows = kBlockBytes / (std::max<int64_t>(k, 1) * int64_t(sizeof(scalar_t)));
  return std::max<int64_t>(kTileRows, rows / kTileRows * kTileRows);
}

// R rows of A against one panel. full: the panel has all its columns (else
// `cols`, read and written with partial loads and stores).
template <typename scalar_t, int64_t R, bool full>
C10_ALWAYS_INLINE void tile(int64_t k, const scalar_t* a, int64_t a_row, int64_t a_step,
                            const scalar_t* b, int64_t b_ld, int64_t cols, scalar_t beta,
                            scalar_t* c, int64_t ldc) {
  using V = Vec<scalar_t>;
  constexpr int64_t L = V::size();
  const int64_t cols0 = full ? L : std::min<int64_t>(L, cols);
  const int64_t cols1 = full ? L : std::max<int64_t>(0, cols - L);
  Vectors<V, R> a0, a1;
  V(&acc0)[R] = a0.v;
  V(&acc1)[R] = a1.v;
#pragma GCC unroll 16
  for (int64_t r = 0; r < R; ++r) {
    if (beta == scalar_t(0)) {
      acc0[r] = V(scalar_t(0));
      acc1[r] = V(scalar_t(0));
    } else {
      scalar_t* out = c + r * ldc;
      acc0[r] = full ? V::loadu(out) : V::loadu(out, cols0);
      acc1[r] = cols1 > 0 ? (full ? V::loadu(out + L) : V::loadu(out + L, cols1)) : V(scalar_t(0));
      if (beta != scalar_t(1)) {
        acc0[r] = acc0[r] * V(beta);
        acc1[r] = acc1[r] * V(beta);
      }
    }
  }
  // Unrolled by 4: the loop's counter and the pointer reloads GCC spills for the 12-row
  // tile's row addresses (15 of 16 registers) took issue slots from the FMAs. Alone, one
  // thread, (m, n, k) = (64, 1024, 512) (a recurrent step's half): 150-152 -> 165-168
  // GFLOP/s; LSTM (100, 64, 512, 512) inference, 2 threads, 102.5-106.0 -> 97.6-99.4 ms
  // (Intel Xeon with AMX). Unrolled by 8: no faster.
#pragma GCC unroll 4
  for (int64_t kk = 0; kk < k; ++kk) {
    const scalar_t* bk = b + kk * b_ld;
    const V b0 = full ? V::loadu(bk) : V::loadu(bk, cols0);
    const V b1 = full ? V::loadu(bk + L) : V::loadu(bk + L, cols1);
    const scalar_t* ak = a + kk * a_step;
#pragma GCC unroll 16
    for (int64_t r = 0; r < R; ++r) {
      const V av(ak[r * a_row]);
      acc0[r] = at::vec::fmadd(av, b0, acc0[r]);
      acc1[r] = at::vec::fmadd(av, b1, acc1[r]);
    }
  }
#pragma GCC unroll 16
  for (int64_t r = 0; r < R; ++r) {
    scalar_t* out = c + r * ldc;
    if (full) {
      acc0[r].store(out);
      acc1[r].store(out + L);
    } else {
      acc0[r].store(out, cols0);
      if (cols1 > 0) acc1[r].store(out + L, cols1);
    }
  }
}

// The heights of the tiles that cover m rows: kTileRows at a time, then the remainder in
// tiles of halving height (8, 4, 2, 1). Calls f(first row, height) for each.
template <typename F>
C10_ALWAYS_INLINE void for_each_tile(int64_t m, const F& f) {
  int64_t full = m / kTileRows;
  // A remainder of 4 rows after 12-row tiles: the last 16 rows as two tiles of 8 (16
  // accumulators each) rather than 12 + 4, whose 8 chains barely cover the FMA latency.
  if (kTileRows == 12 && full > 0 && m % kTileRows == 4) --full;
  int64_t r = 0;
  for (; r < full * kTileRows; r += kTileRows) f(r, kTileRows);
  for (int64_t h = 8; h >= 1; h /= 2) {
    while (h < kTileRows && r + h <= m) {
      f(r, h);
      r += h;
    }
  }
}

// One tile of height h (one of those for_each_tile gives).
template <typename scalar_t, bool full>
C10_ALWAYS_INLINE void tile_of_height(int64_t h, int64_t k, const scalar_t* a, int64_t a_row,
                                      int64_t a_step, const scalar_t* b, int64_t b_ld,
                                      int64_t cols, scalar_t beta, scalar_t* c, int64_t ldc) {
  switch (h) {
    case kTileRows:
      return tile<scalar_t, kTileRows, full>(k, a, a_row, a_step, b, b_ld, cols, beta, c, ldc);
#if defined(CPU_CAPABILITY_AVX512)
    case 8:
      return tile<scalar_t, 8, full>(k, a, a_row, a_step, b, b_ld, cols, beta, c, ldc);
#endif
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    case 4:
      return tile<scalar_t, 4, full>(k, a, a_row, a_step, b, b_ld, cols, beta, c, ldc);
#endif
    case 2:
      return tile<scalar_t, 2, full>(k, a, a_row, a_step, b, b_ld, cols, beta, c, ldc);
    default:
      return tile<scalar_t, 1, full>(k, a, a_row, a_step, b, b_ld, cols, beta, c, ldc);
  }
}

// One tile of height h against a panel of `cols` columns: the whole-panel form where it
// has all of them (gemm_of, gemm_transposed).
template <typename scalar_t>
C10_ALWAYS_INLINE void tile_of_panel(int64_t h, int64_t k, const scalar_t* a, int64_t a_row,
                                     int64_t a_step, const scalar_t* b, int64_t b_ld,
                                     int64_t cols, scalar_t beta, scalar_t* c, int64_t ldc) {
  if (cols == 2 * Vec<scalar_t>::size()) {
    tile_of_height<scalar_t, true>(h, k, a, a_row, a_step, b, b_ld, cols, beta, c, ldc);
  } else {
    tile_of_height<scalar_t, false>(h, k, a, a_row, a_step, b, b_ld, cols, beta, c, ldc);
  }
}

// count (<= one vector's) elements of w as a vector of scalar_t, zeros past count: as
// they are, or a bfloat16 weight's widened (exactly: its bits are a float's top half).
template <typename scalar_t>
C10_ALWAYS_INLINE Vec<scalar_t> load_w(const scalar_t* w, int64_t count) {
  return count == Vec<scalar_t>::size() ? Vec<scalar_t>::loadu(w)
                                        : Vec<scalar_t>::loadu(w, count);
}
template <typename scalar_t>
C10_ALWAYS_INLINE Vec<scalar_t> load_w(const c10::BFloat16* w, int64_t count) {
  return load_widened<scalar_t>(w, count);
}

// count (<= one vector's) sums of x into a bfloat16 C, rounded as Tensor.to rounds them
// (to nearest even; at::vec's conversion, the bits of gemm_bf16.cpp's round_rows). Only
// float32 sums are rounded so (the double form exists for the kernel table alone).
template <typename scalar_t>
C10_ALWAYS_INLINE void store_rounded(const Vec<scalar_t>& x, c10::BFloat16* out,
                                     int64_t count) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    at::vec::convert_from_float<c10::BFloat16>(x, x).store(out, static_cast<int>(count));
  } else {
    scalar_t values[Vec<scalar_t>::size()];
    x.store(values);
    for (int64_t i = 0; i < count; ++i) out[i] = c10::BFloat16(static_cast<float>(values[i]));
  }
}

// A few rows of A against a B read in place, row after row of B: R rows by NV vectors of
// columns, over the whole of k. full: NV whole vectors; else NV == 1 and `tail` (fewer
// than a vector's) columns. Each output is the chain tile() makes (the same bits). C in
// scalar_t, or bfloat16 (c_t) rounded into, the sums starting from partial (rows
// ld_partial apart; as beta = 1 reads C) or, where it is null, from zero.
template <typename scalar_t, typename b_t, int64_t R, int64_t NV, bool full,
          typename c_t = scalar_t>
C10_ALWAYS_INLINE void stream_tile(int64_t k, const scalar_t* a, int64_t a_row, int64_t a_step,
                                   const b_t* b, int64_t b_ld, int64_t tail, scalar_t beta,
                                   c_t* c, int64_t ldc, const scalar_t* partial,
                                   int64_t ld_partial) {
  constexpr bool round = !std::is_same_v<c_t, scalar_t>;
  using V = Vec<scalar_t>;
  constexpr int64_t L = V::size();
  const int64_t last = full ? L : tail;
  Vectors<V, R * NV> accumulators;
  V(&acc)[R * NV] = accumulators.v;
#pragma GCC unroll 16
  for (int64_t r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int64_t v = 0; v < NV; ++v) {
      V& x = acc[r * NV + v];
      if (round && partial != nullptr) {
        const scalar_t* in = partial + r * ld_partial + v * L;
        x = full ? V::loadu(in) : V::loadu(in, last);
      } else if (round || beta == scalar_t(0)) {
        x = V(scalar_t(0));
      } else if constexpr (!round) {
        const scalar_t* out = c + r * ldc + v * L;
        x = full ? V::loadu(out) : V::loadu(out, last);
        if (beta != scalar_t(1)) x = x * V(beta);
      }
    }
  }
#pragma GCC unroll 2
  for (int64_t kk = 0; kk < k; ++kk) {
    const b_t* bk = b + kk * b_ld;
    Vectors<V, NV> row;
#pragma GCC unroll 16
    for (int64_t v = 0; v < NV; ++v) row.v[v] = load_w<scalar_t>(bk + v * L, full ? L : last);
    const scalar_t* ak = a + kk * a_step;
#pragma GCC unroll 16
    for (int64_t r = 0; r < R; ++r) {
      const V av(ak[r * a_row]);
#pragma GCC unroll 16
      for (int64_t v = 0; v < NV; ++v) {
        acc[r * NV + v] = at::vec::fmadd(av, row.v[v], acc[r * NV + v]);
      }
    }
  }
  if constexpr (round && full && NV % 2 == 0 && std::is_same_v<scalar_t, float>) {
    // Two vectors rounded into one of bfloat16, stored whole: a vector at a time (each a
    // partial store), rounding here was no faster than round_rows on the float32 block
    // after (decoder of two bfloat16 GRUCells at batch 1, backward 1.182 against 1.174
    // ms a step, in one process alternating; AMD Zen 4).
#pragma GCC unroll 16
    for (int64_t r = 0; r < R; ++r) {
#pragma GCC unroll 16
      for (int64_t v = 0; v < NV; v += 2) {
        at::vec::convert_from_float<c10::BFloat16>(acc[r * NV + v], acc[r * NV + v + 1])
            .store(c + r * ldc + v * L);
      }
    }
    return;
  }
#pragma GCC unroll 16
  for (int64_t r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int64_t v = 0; v < NV; ++v) {
      c_t* out = c + r * ldc + v * L;
      if constexpr (round) {
        store_rounded(acc[r * NV + v], out, last);
      } else if (full) {
        acc[r * NV + v].store(out);
      } else {
        acc[r * NV + v].store(out, last);
      }
    }
  }
}

// Accumulators of a streaming tile: as many as the tiles' own less a few, so that a
// row's NV vectors of B stay in registers beside them.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int64_t kStreamAccumulators = 16;
#else
constexpr int64_t kStreamAccumulators = 8;
#endif
// A B of at most this many bytes is run against a tile's rows panel after panel (gemm_of).
constexpr int64_t kSmallB = int64_t(16) << 10;
// A at most this high, against a B in place, is streamed (gemm_of).
constexpr int64_t kStreamRows = 4;
// An A of at most this many bytes, read in place, is run against each panel of B whole
// (gemm_of).
constexpr int64_t kInPlaceA = int64_t(512) << 10;

// Columns [j, n) of R rows: NV vectors at a time, then NV / 2, ..., 1, then the last
// partial vector.
template <typename scalar_t, typename b_t, int64_t R, int64_t NV, typename c_t>
C10_ALWAYS_INLINE void stream_rows(int64_t n, int64_t j, int64_t k, const scalar_t* a,
                                   int64_t a_row, int64_t a_step, const b_t* b, int64_t b_ld,
                                   scalar_t beta, c_t* c, int64_t ldc, const scalar_t* partial,
                                   int64_t ld_partial) {
  constexpr int64_t L = Vec<scalar_t>::size();
  const auto at = [&](int64_t col) { return partial != nullptr ? partial + col : nullptr; };
  for (; j + NV * L <= n; j += NV * L) {
    stream_tile<scalar_t, b_t, R, NV, true, c_t>(k, a, a_row, a_step, b + j, b_ld, 0, beta,
                                                 c + j, ldc, at(j), ld_partial);
  }
  if constexpr (NV > 1) {
    stream_rows<scalar_t, b_t, R, NV / 2, c_t>(n, j, k, a, a_row, a_step, b, b_ld, beta, c,
                                               ldc, partial, ld_partial);
  } else if (j < n) {
    stream_tile<scalar_t, b_t, R, 1, false, c_t>(k, a, a_row, a_step, b + j, b_ld, n - j, beta,
                                                 c + j, ldc, at(j), ld_partial);
  }
}

// h (<= kStreamRows, one of for_each_tile's heights) rows of A against all n columns.
template <typename scalar_t, typename b_t, typename c_t = scalar_t>
void stream_tile_of_height(int64_t h, int64_t n, int64_t k, const scalar_t* a, int64_t a_row,
                           int64_t a_step, const b_t* b, int64_t b_ld, scalar_t beta, c_t* c,
                           int64_t ldc, const scalar_t* partial = nullptr,
                           int64_t ld_partial = 0) {
  constexpr int64_t A = kStreamAccumulators;
  switch (h) {
    case 4:
      return stream_rows<scalar_t, b_t, 4, A / 4, c_t>(n, 0, k, a, a_row, a_step, b, b_ld, beta,
                                                       c, ldc, partial, ld_partial);
    case 2:
      return stream_rows<scalar_t, b_t, 2, A / 2, c_t>(n, 0, k, a, a_row, a_step, b, b_ld, beta,
                                                       c, ldc, partial, ld_partial);
    default:
      return stream_rows<scalar_t, b_t, 1, A, c_t>(n, 0, k, a, a_row, a_step, b, b_ld, beta, c,
                                                   ldc, partial, ld_partial);
  }
}

// Rows [0, m) of A (a(r, kk) as gemm_of reads it) streamed against B, kStreamRows at a
// time.
template <typename scalar_t, typename b_t, typename c_t = scalar_t>
void stream_few_rows(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t a_row,
                     int64_t a_step, const b_t* b, int64_t b_ld, scalar_t beta, c_t* c,
                     int64_t ldc, const scalar_t* partial = nullptr, int64_t ld_partial = 0) {
  for (int64_t i0 = 0; i0 < m; i0 += kStreamRows) {
    for_each_tile(std::min(kStreamRows, m - i0), [&](int64_t r0, int64_t h) {
      const int64_t r = i0 + r0;
      stream_tile_of_height<scalar_t, b_t, c_t>(
          h, n, k, a + r * a_row, a_row, a_step, b, b_ld, beta, c + r * ldc, ldc,
          partial != nullptr ? partial + r * ld_partial : nullptr, ld_partial);
    });
  }
}

// Per-thread scratch for the packed copies of A and B (grown, never shrunk).
template <typename scalar_t>
scalar_t* scratch(std::vector<scalar_t>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

// A block of m rows of a transposed A whose rows are consecutive (row r, step kk at
// a[r + kk * a_step]: a weight gradient's dg^T) into dst as [tile][k][height]. Step by
// step over the whole block, so that each line of a step's m elements is read once; a
// tile's elements are one masked load and store. The copy a tile at a time, element by
// element, reread a line per step and tile, and was 6.4% of the LSTM (100, 16, 128, 128)
// training step; with this one that step went 6.86-6.99 -> 6.59-6.77 ms, GRU 5.68-5.75
// -> 5.51-5.77, RNN 2.16-2.35 -> 2.11-2.24 (2 threads, Intel Xeon with AMX).
template <typename scalar_t>
void pack_transposed_rows(int64_t m, int64_t k, const scalar_t* a, int64_t a_step,
                          scalar_t* dst) {
  using V = Vec<scalar_t>;
  constexpr int64_t L = V::size();
  for (int64_t kk = 0; kk < k; ++kk) {
    const scalar_t* src = a + kk * a_step;
    for_each_tile(m, [&](int64_t r0, int64_t h) {
      scalar_t* out = dst + r0 * k + kk * h;
      for (int64_t j = 0; j < h; j += L) {
        const int64_t n = std::min(L, h - j);
        V::loadu(src + r0 + j, n).store(out + j, n);
      }
    });
  }
}

// m rows of a transposed A, a(r, kk) = a[r * a_row + kk * a_step], into dst as
// [tile][k][height] (the tiles of for_each_tile).
template <typename scalar_t>
void pack_a_block(int64_t m, int64_t k, const scalar_t* a, int64_t a_row, int64_t a_step,
                  scalar_t* dst) {
  if (a_row == 1) return pack_transposed_rows(m, k, a, a_step, dst);
  for_each_tile(m, [&](int64_t r0, int64_t h) {
    scalar_t* out = dst + r0 * k;
    const scalar_t* src = a + r0 * a_row;
    for (int64_t kk = 0; kk < k; ++kk) {
      for (int64_t r = 0; r < h; ++r) out[kk * h + r] = src[r * a_row + kk * a_step];
    }
  });
}

// `cols` (<= a panel's width) columns of a row-major B (rows b_ld apart) into dst as
// [k][width], the panel layout. B's rows are 2 KiB and more apart, which the prefetchers
// do not follow: each row's lines are asked for kPrefetchRows rows ahead, and copied by
// vector loads and stores, not a memmove call per row (with gemm_of's panel-at-a-time
// packing: GRU, 2 layers, (N, H) = (64, 512), one-step training call, medians of
// alternating builds, 6.10-6.35 -> 5.93-5.99 ms).
template <typename scalar_t>
void copy_b_panel(int64_t k, int64_t cols, const scalar_t* b, int64_t b_ld, scalar_t* dst) {
  using V = Vec<scalar_t>;
  constexpr int64_t L = V::size(), width = 2 * L, kPrefetchRows = 16;
  for (int64_t kk = 0; kk < k; ++kk) {
    const scalar_t* row = b + kk * b_ld;
    if (kk + kPrefetchRows < k) {
      __builtin_prefetch(row + kPrefetchRows * b_ld);
      __builtin_prefetch(row + kPrefetchRows * b_ld + cols - 1);
    }
    for (int64_t j = 0; j < cols; j += L) {
      const int64_t count = std::min(L, cols - j);
      V::loadu(row + j, count).store(dst + kk * width + j, count);
    }
  }
}

// Columns [0, n) of a row-major B (rows b_ld apart) as gemm's panels, [panels, k, width].
template <typename scalar_t>
void pack_b_panels(int64_t n, int64_t k, const scalar_t* b, int64_t b_ld, scalar_t* dst) {
  constexpr int64_t width = 2 * Vec<scalar_t>::size();
  for (int64_t j0 = 0; j0 < n; j0 += width) {
    copy_b_panel(k, std::min(width, n - j0), b + j0, b_ld, dst + (j0 / width) * k * width);
  }
}

// Rows in cache blocks (block_rows), and within a block panel after panel: a panel is
// read once per block, and then from L1/L2 by every tile.
//
// Operands are copied first into the order the tiles read them, where they are reused: a
// block of a transposed A as [tile][k][height] when there are several panels; a B given
// in place as panels [panel][k][width], once per call, when there are several tiles (a
// panel at a time, just before its tiles, where A is read in place and fits L2). In
// place, a weight-gradient GEMM reads A transposed, a tile's rows 8 KiB apart at
// (T, N, I, H) = (100, 64, 512, 512), and B's rows 2 KiB apart: strides that map to a few
// sets of L1, which then held almost nothing (the LSTM training step there took 1.7 s
// instead of 1.0 with MKL). A row-major A is read in place: each tile row's elements are
// consecutive, and the copy (every step's state, once per unit block) cost more than it
// saved: LSTM (100, 64, 512, 512) on the Intel Xeon with AMX, 2 threads, inference
// 103-107 -> 93-94 ms, training 399-404 -> 365-376 ms. The copies move data only: the bits
// are those of the operands read in place.
//
// prepacked: A packed already (pack_a), which a and its strides are then not; else null.
template <typename scalar_t>
void gemm_of(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t a_row, int64_t a_step,
             const scalar_t* prepacked, const scalar_t* b, int64_t b_ld, int64_t b_panel,
             scalar_t beta, scalar_t* c, int64_t ldc) {
  constexpr int64_t width = 2 * Vec<scalar_t>::size();
  if (m <= 0 || n <= 0) return;
  const int64_t panels = (n + width - 1) / width;
  // A few rows against a B in place (a one-step call's input gradient at batch 1, a bias
  // gradient's column sums): B row after row, a run of up to 16 vectors of each row at a
  // time. Panel after panel, each row of B was two lines of a panel, 2 KiB or more from
  // the previous row's, which the prefetchers do not follow. With the accumulators'
  // zeroing gone (Vectors), GRU backward op, (T, N, H) = (1, 1, 512), one thread: 923 ->
  // 789 us.
  if (m <= kStreamRows && b_panel == width && panels > 1) {
    for_each_tile(m, [&](int64_t r0, int64_t h) {
      const bool packed = prepacked != nullptr;
      stream_tile_of_height<scalar_t, scalar_t>(h, n, k,
                                                packed ? prepacked + r0 * k : a + r0 * a_row,
                                                packed ? 1 : a_row, packed ? h : a_step, b, b_ld,
                                                beta, c + r0 * ldc, ldc);
    });
    return;
  }
  thread_local std::vector<scalar_t> a_buffer, b_buffer;
  const int64_t rows = block_rows<scalar_t>(k);
  // a transposed A, or one packed already
  const bool pack_a = prepacked != nullptr || (panels > 1 && k > 0 && a_step != 1);
  const bool pack_b = b_panel == width && b_ld != width && m > kTileRows && k > 0;
  scalar_t* a_scratch =
      pack_a && prepacked == nullptr ? scratch(a_buffer, std::min(rows, m) * k) : nullptr;
  const auto pack_b_panel = [&](int64_t p, scalar_t* dst) {
    copy_b_panel(k, std::min(width, n - p * width), b + p * b_panel, b_ld, dst);
  };
  // With a B of a few KiB (k small: a one-step call's weight gradient, k = the batch),
  // writing C is most of the work: tile after tile, each writing its rows across every
  // panel, rather than panel after panel, which wrote 128 bytes of each row in turn, each
  // 2 KiB or more from the last (n = 512). GRU backward op, (T, N, H) = (1, 1, 512): one
  // thread 808 -> 664 us, two 465 -> 414; B of 256 KiB (batch 64) was no faster.
  const bool tiles_outer = k * n * int64_t(sizeof(scalar_t)) <= kSmallB;
  // An A read in place that stays in L2 beside a panel (a one-step call's dx = dg @ w_ih
  // and dh = dg @ w_hh at batch 64): panel after panel, each packed just before its tiles
  // into a buffer that stays in L2, every row of A against it. Packed whole first, B went
  // to memory and came back once per block of rows (that call 6.10-6.35 -> 6.05-6.15 ms
  // alone).
  if (pack_b && !pack_a && !tiles_outer && m * k * int64_t(sizeof(scalar_t)) <= kInPlaceA) {
    scalar_t* panel = scratch(b_buffer, k * width);
    for (int64_t p = 0; p < panels; ++p) {
      pack_b_panel(p, panel);
      const int64_t cols = std::min(width, n - p * width);
      for_each_tile(m, [&](int64_t r0, int64_t h) {
        tile_of_panel(h, k, a + r0 * a_row, a_row, a_step, panel, width, cols, beta,
                      c + r0 * ldc + p * width, ldc);
      });
    }
    return;
  }
  if (pack_b) {
    // Once for all the blocks of rows: packing a panel per block was a third of the time
    // of a [1024, 2048] x [2048, 512] product (B from L3, its rows 2 KiB apart).
    scalar_t* packed = scratch(b_buffer, panels * k * width);
    for (int64_t p = 0; p < panels; ++p) pack_b_panel(p, packed + p * k * width);
    b = packed;
    b_ld = width;
    b_panel = k * width;
  }
  for (int64_t i0 = 0; i0 < m; i0 += rows) {
    const int64_t mi = std::min(rows, m - i0);
    const scalar_t* ai = a + i0 * a_row;
    scalar_t* ci = c + i0 * ldc;
    const scalar_t* a_packed = prepacked != nullptr ? prepacked + i0 * k : a_scratch;
    if (a_scratch != nullptr) pack_a_block(mi, k, ai, a_row, a_step, a_scratch);
    const auto run_tile = [&](int64_t p, int64_t r0, int64_t h) {
      const int64_t cols = std::min(width, n - p * width);
      const scalar_t* bp = b + p * b_panel;
      const scalar_t* at = pack_a ? a_packed + r0 * k : ai + r0 * a_row;
      const int64_t at_row = pack_a ? 1 : a_row, at_step = pack_a ? h : a_step;
      tile_of_panel(h, k, at, at_row, at_step, bp, b_ld, cols, beta, ci + r0 * ldc + p * width,
                    ldc);
    };
    if (tiles_outer) {
      for_each_tile(mi, [&](int64_t r0, int64_t h) {
        for (int64_t p = 0; p < panels; ++p) run_tile(p, r0, h);
      });
    } else {
      for (int64_t p = 0; p < panels; ++p) {
        for_each_tile(mi, [&](int64_t r0, int64_t h) { run_tile(p, r0, h); });
      }
    }
  }
}

template <typename scalar_t>
void gemm(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t a_row, int64_t a_step,
          const scalar_t* b, int64_t b_ld, int64_t b_panel, scalar_t beta, scalar_t* c,
          int64_t ldc) {
  gemm_of<scalar_t>(m, n, k, a, a_row, a_step, nullptr, b, b_ld, b_panel, beta, c, ldc);
}

// A's rows [0, m) as gemm packs them, its cache blocks one after another (m * k elements).
template <typename scalar_t>
void pack_a(int64_t m, int64_t k, const scalar_t* a, int64_t a_row, int64_t a_step,
            scalar_t* dst) {
  const int64_t rows = block_rows<scalar_t>(k);
  for (int64_t i0 = 0; i0 < m; i0 += rows) {
    pack_a_block(std::min(rows, m - i0), k, a + i0 * a_row, a_row, a_step, dst + i0 * k);
  }
}

template <typename scalar_t>
void gemm_packed_a(int64_t m, int64_t n, int64_t k, const scalar_t* a, const scalar_t* b,
                   int64_t b_ld, int64_t b_panel, scalar_t beta, scalar_t* c, int64_t ldc) {
  gemm_of<scalar_t>(m, n, k, nullptr, 0, 0, a, b, b_ld, b_panel, beta, c, ldc);
}

// The product stored transposed: c[j * ldc + i] = (a @ b)[i, j] + beta * c[j * ldc + i],
// a row-major ([m, k], leading dim lda, read in place) and b packed ([panels, k, width]).
// Each R-row tile of a is read into L1 once and run against every panel (the panels, a
// few rows of a step's state, stay in L2); its outputs go through a small row-major
// buffer, which C's transposed rows are copied into and out of.
//
// The step products of a call of few steps, with a = the weight's rows in place and b the
// step's state packed: the same sums, fused multiply-add for fused multiply-add, as the
// state against the packed weight (a * b and b * a round alike), without packing the
// weight, which a call of one step reads once. LSTM, (N, H) = (64, 512), 2 layers, one
// step per call: the weights' packing was a quarter of the call.
template <typename scalar_t>
void gemm_transposed(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                     const scalar_t* b, scalar_t beta, scalar_t* c, int64_t ldc) {
  constexpr int64_t width = 2 * Vec<scalar_t>::size();
  if (m <= 0 || n <= 0) return;
  const int64_t panels = (n + width - 1) / width;
  alignas(64) scalar_t tile_c[kTileRows * width];
  for_each_tile(m, [&](int64_t r0, int64_t h) {
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t j0 = p * width, cols = std::min(width, n - j0);
      scalar_t* ct = c + j0 * ldc + r0;
      // Through ATen's transposition (16 x 16 blocks in AVX-512 registers), not element
      // by element: LSTM, 2 layers, (N, H) = (64, 256), one-step call under no_grad,
      // medians of alternating builds, 749-770 -> 715-738 us.
      if (beta != scalar_t(0)) {
        at::vec::transpose_mxn<scalar_t>(ct, ldc, tile_c, width, static_cast<int>(cols),
                                         static_cast<int>(h));
      }
      const scalar_t* bp = b + p * k * width;
      tile_of_panel(h, k, a + r0 * lda, lda, 1, bp, width, cols, beta, tile_c, width);
      at::vec::transpose_mxn<scalar_t>(tile_c, width, ct, ldc, static_cast<int>(h),
                                       static_cast<int>(cols));
    }
  });
}

// The sum of v's lanes, in a fixed order. With AVX-512 and AVX2 as a tree (lane l plus
// lane l + w, for w halving down to 1): one chain of 16 adds, 4 cycles each, per output
// was most of a step at (T, N, I, H) = (200, 1, 64, 64), whose products are all dot's.
// Elsewhere lane after lane.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
C10_ALWAYS_INLINE float tree_sum(__m128 q) {
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}
C10_ALWAYS_INLINE double tree_sum(__m128d q) {
  return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
}
C10_ALWAYS_INLINE float tree_sum(__m256 x) {
  return tree_sum(_mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1)));
}
C10_ALWAYS_INLINE double tree_sum(__m256d x) {
  return tree_sum(_mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1)));
}
#endif
#if defined(CPU_CAPABILITY_AVX512)
C10_ALWAYS_INLINE float tree_sum(__m512 x) {
  return tree_sum(_mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1)));
}
C10_ALWAYS_INLINE double tree_sum(__m512d x) {
  return tree_sum(_mm256_add_pd(_mm512_castpd512_pd256(x), _mm512_extractf64x4_pd(x, 1)));
}
#endif

template <typename scalar_t>
C10_ALWAYS_INLINE scalar_t lane_sum(const Vec<scalar_t>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  using Raw = std::conditional_t<std::is_same_v<scalar_t, float>, __m512, __m512d>;
  return tree_sum(static_cast<Raw>(v));
#elif defined(CPU_CAPABILITY_AVX2)
  using Raw = std::conditional_t<std::is_same_v<scalar_t, float>, __m256, __m256d>;
  return tree_sum(static_cast<Raw>(v));
#else
  scalar_t lanes[Vec<scalar_t>::size()];
  v.store(lanes);
  scalar_t sum = lanes[0];
  for (int64_t l = 1; l < Vec<scalar_t>::size(); ++l) sum += lanes[l];
  return sum;
#endif
}

// J rows of w against one row of a: J * 2 vector chains over k (two per row of w, for
// the FMA latency), the last vector of k partial. The lanes of each row's two chains are
// then added in a fixed order (lane_sum). The next J rows' lines are asked for as these
// are read: each group is J short streams (2 KiB at k = 512), too short for the
// prefetchers to follow (GRU, 2 layers, (N, H) = (1, 512), one-step call under no_grad,
// weights from L3, medians of alternating builds, 358-366 -> 349 us; two groups ahead
// no faster). w_t: scalar_t, or bfloat16 (a bfloat16 op's
// weight read where it is, half the bytes of a float32 copy, the same sums as on one).
template <typename scalar_t, typename w_t, int64_t J>
C10_ALWAYS_INLINE void dot_rows(int64_t k, const scalar_t* a, const w_t* w, int64_t ldw,
                                scalar_t beta, scalar_t* c) {
  using V = Vec<scalar_t>;
  constexpr int64_t L = V::size();
  Vectors<V, J> a0, a1;
  V(&acc0)[J] = a0.v;
  V(&acc1)[J] = a1.v;
#pragma GCC unroll 8
  for (int64_t j = 0; j < J; ++j) acc0[j] = acc1[j] = V(scalar_t(0));
  int64_t kk = 0;
  for (; kk + 2 * L <= k; kk += 2 * L) {
    const V a0 = V::loadu(a + kk), a1 = V::loadu(a + kk + L);
#pragma GCC unroll 8
    for (int64_t j = 0; j < J; ++j) {
      __builtin_prefetch(w + (J + j) * ldw + kk);
      __builtin_prefetch(w + (J + j) * ldw + kk + L);
      acc0[j] = at::vec::fmadd(a0, load_w<scalar_t>(w + j * ldw + kk, L), acc0[j]);
      acc1[j] = at::vec::fmadd(a1, load_w<scalar_t>(w + j * ldw + kk + L, L), acc1[j]);
    }
  }
  for (; kk < k; kk += L) {
    const int64_t count = std::min<int64_t>(L, k - kk);
    const V a0 = V::loadu(a + kk, count);
#pragma GCC unroll 8
    for (int64_t j = 0; j < J; ++j) {
      acc0[j] = at::vec::fmadd(a0, load_w<scalar_t>(w + j * ldw + kk, count), acc0[j]);
    }
  }
#pragma GCC unroll 8
  for (int64_t j = 0; j < J; ++j) {
    const scalar_t sum = lane_sum<scalar_t>(acc0[j] + acc1[j]);
    c[j] = beta == scalar_t(0) ? sum : beta * c[j] + sum;
  }
}

template <typename scalar_t, typename w_t>
void dot_of(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda, const w_t* w,
            int64_t ldw, scalar_t beta, scalar_t* c, int64_t ldc) {
  for (int64_t r = 0; r < m; ++r) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      dot_rows<scalar_t, w_t, 4>(k, a + r * lda, w + j * ldw, ldw, beta, c + r * ldc + j);
    }
    for (; j < n; ++j) {
      dot_rows<scalar_t, w_t, 1>(k, a + r * lda, w + j * ldw, ldw, beta, c + r * ldc + j);
    }
  }
}

template <typename scalar_t>
void dot(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda, const scalar_t* w,
         int64_t ldw, scalar_t beta, scalar_t* c, int64_t ldc) {
  dot_of<scalar_t, scalar_t>(m, n, k, a, lda, w, ldw, beta, c, ldc);
}

template <typename scalar_t>
void gemm_few_rows_bf16(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t a_row,
                        int64_t a_step, const uint16_t* b, int64_t b_ld, scalar_t beta,
                        scalar_t* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  stream_few_rows<scalar_t, c10::BFloat16>(m, n, k, a, a_row, a_step,
                                           reinterpret_cast<const c10::BFloat16*>(b), b_ld,
                                           beta, c, ldc);
}

// One-step calls at batch 1 or 2: their weight gradients (outer products, k = N) went
// into a float32 block and round_rows rounded it, 11.9% of the samples of a decoder of
// two bfloat16 GRUCells at (N, H) = (1, 512), training, beside the products' 10.9%.
template <typename scalar_t>
void gemm_few_rows_bf16_round(int64_t m, int64_t n, int64_t k, const scalar_t* a,
                              int64_t a_row, int64_t a_step, const uint16_t* b, int64_t b_ld,
                              const scalar_t* partial, int64_t ld_partial, uint16_t* c,
                              int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  stream_few_rows<scalar_t, c10::BFloat16, c10::BFloat16>(
      m, n, k, a, a_row, a_step, reinterpret_cast<const c10::BFloat16*>(b), b_ld, scalar_t(0),
      reinterpret_cast<c10::BFloat16*>(c), ldc, partial, ld_partial);
}

template <typename scalar_t>
void dot_bf16(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
              const uint16_t* w, int64_t ldw, scalar_t beta, scalar_t* c, int64_t ldc) {
  dot_of<scalar_t, c10::BFloat16>(m, n, k, a, lda, reinterpret_cast<const c10::BFloat16*>(w),
                                  ldw, beta, c, ldc);
}

}  // namespace

GATEDRNN_CPU_KERNEL_TABLE(GemmKernels, gemm_kernels, 2 * Vec<scalar_t>::size(), &gemm<scalar_t>,
                          &pack_a<scalar_t>, &gemm_packed_a<scalar_t>, &pack_b_panels<scalar_t>,
                          &gemm_transposed<scalar_t>, &dot<scalar_t>, &dot_bf16<scalar_t>,
                          &gemm_few_rows_bf16<scalar_t>, &gemm_few_rows_bf16_round<scalar_t>)

}  // namespace CPU_CAPABILITY
}  // namespace gatedrnn
