// The bfloat16 GEMM micro-kernels (gemm_bf16.h). setup.py compiles this file once per ISA
// like the others; only the AVX-512 build defines kernels, each function compiled for
// its extension by a target attribute (AMX and AVX512_BF16 are not in the build's flags,
// so nothing else in the build can use them), and run only where CPUID lists it.
#include "gemm_bf16.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__) && \
    ((!defined(__clang__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12))
#define GATEDRNN_BF16_KERNELS 1
#include <immintrin.h>
#endif

namespace gatedrnn {
namespace CPU_CAPABILITY {

#ifdef GATEDRNN_BF16_KERNELS
namespace {

// Rows of A per cache block, whose bfloat16 copy every panel of B reads: 256 KiB of it.
int64_t block_rows(int64_t kp, int64_t multiple) {
  const int64_t rows = (int64_t(128) << 10) / std::max<int64_t>(kp, 1);
  return std::max<int64_t>(multiple, rows / multiple * multiple);
}

template <typename T>
T* scratch(std::vector<T>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

// ---------------------------------------------------------------------------------------
// Conversion to bfloat16 (VCVTNE2PS2BF16: to nearest, ties to even; both kernels' CPUs
// have it) while copying operands into the kernels' layouts. Scalar, an element took
// longer to convert and place than the AMX tiles took to multiply it (a weight gradient's
// transposed A, converted a column at a time, doubled the LSTM training step).

#define GATEDRNN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// The pairs (x[i], y[i]) of 16 floats each as 16 dwords, x in the low half: one row of a
// panel (or of an A tile in pair layout) for two consecutive k.
GATEDRNN_BF16_TARGET inline __m512i pairs(__m512 x, __m512 y) {
  const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(y, x);  // x0..x15, y0..y15
  const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25,
                                         9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2,
                                         17, 1, 16, 0);
  return _mm512_permutexvar_epi16(order, both);
}

GATEDRNN_BF16_TARGET inline __m512 load_or_zero(const float* p, int64_t count) {
  return count >= 16 ? _mm512_loadu_ps(p)
                     : _mm512_maskz_loadu_ps(__mmask16((1u << std::max<int64_t>(count, 0)) - 1), p);
}

// Transposes 16 x 16 dwords in registers: row i of the input becomes column i.
GATEDRNN_BF16_TARGET inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // u[4g + c]: in its 128-bit lane l, column 4l + c of rows 4g .. 4g + 3.
  __m512i u[16];
  for (int g = 0; g < 4; ++g) {
    u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  // Column 4l + c: lane l of u[c], u[4 + c], u[8 + c], u[12 + c].
  for (int c = 0; c < 4; ++c) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44);
    const __m512i v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xee);
    const __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
    const __m512i w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xee);
    r[0 + c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(v0, w0, 0xdd);
    r[8 + c] = _mm512_shuffle_i32x4(v1, w1, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(v1, w1, 0xdd);
  }
}

// 32 floats x[0..count) (zeros past count) as 32 bfloat16, stored at dst.
GATEDRNN_BF16_TARGET inline void convert32(const float* x, int64_t count, uint16_t* dst) {
  const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(load_or_zero(x + 16, count - 16),
                                                 load_or_zero(x, count));
  _mm512_storeu_si512(dst, v);
}

// 16 columns of B's rows kk and kk + 1 from row on (the next row ld further; zeros past
// `count` columns and for a row past k) as 16 dwords, row kk's element in the low half:
// float32 rounded, or bfloat16 as it is.
GATEDRNN_BF16_TARGET inline __m512i row_pairs(const float* row, int64_t ld, bool second,
                                              int64_t count) {
  const __m512 y = second ? load_or_zero(row + ld, count) : _mm512_setzero_ps();
  return pairs(load_or_zero(row, count), y);
}
GATEDRNN_BF16_TARGET inline __m512i row_pairs(const uint16_t* row, int64_t ld, bool second,
                                              int64_t count) {
  const __mmask16 mask = __mmask16((1u << std::clamp<int64_t>(count, 0, 16)) - 1);
  const __m512i x = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, row));
  if (!second) return x;
  const __m512i y = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, row + ld));
  return _mm512_or_si512(x, _mm512_slli_epi32(y, 16));
}

// The panels of B (gemm_bf16.h) from B's rows, b(kk, j) = src[kk * ldb + j]: two rows of k
// at a time, 16 columns per vector.
template <typename T>
GATEDRNN_BF16_TARGET void pack_rows(const T* src, int64_t ldb, int64_t k, int64_t n,
                                    uint16_t* dst) {
  const int64_t kp = bf16_padded_k(k), panel = kp * kBf16PanelWidth;
  for (int64_t p = 0; p * kBf16PanelWidth < n; ++p) {
    const int64_t j0 = p * kBf16PanelWidth, cols = std::min(kBf16PanelWidth, n - j0);
    uint16_t* out = dst + p * panel;
    for (int64_t kk = 0; kk < kp; kk += 2) {
      for (int64_t half = 0; half < 2; ++half) {
        const __m512i v = kk < k ? row_pairs(src + kk * ldb + j0 + 16 * half, ldb, kk + 1 < k,
                                             cols - 16 * half)
                                 : _mm512_setzero_si512();
        _mm512_storeu_si512(out + kk * kBf16PanelWidth + 32 * half, v);
      }
    }
  }
}

GATEDRNN_BF16_TARGET void pack_b_rows(const float* src, int64_t ldb, int64_t k, int64_t n,
                                      uint16_t* dst) {
  pack_rows(src, ldb, k, n, dst);
}
GATEDRNN_BF16_TARGET void pack_b_rows_bf16(const uint16_t* src, int64_t ldb, int64_t k,
                                           int64_t n, uint16_t* dst) {
  pack_rows(src, ldb, k, n, dst);
}

// 32 consecutive k of a column of B (or a row of A) from col on (zeros past `count` of
// them), as 16 pairs of bfloat16 in dwords: float32 rounded, or bfloat16 as it is.
GATEDRNN_BF16_TARGET inline __m512i column_pairs(const float* col, int64_t count) {
  return (__m512i)_mm512_cvtne2ps_pbh(load_or_zero(col + 16, count - 16), load_or_zero(col, count));
}
GATEDRNN_BF16_TARGET inline __m512i column_pairs(const uint16_t* col, int64_t count) {
  const __mmask32 mask = count >= 32 ? ~__mmask32(0)
                                     : __mmask32((uint64_t(1) << std::max<int64_t>(count, 0)) - 1);
  return _mm512_maskz_loadu_epi16(mask, col);
}

// The panels of B from its columns, b(kk, j) = columns[j][kk] (a weight's rows): 16 columns
// by 32 k at a time, each column's 32 k converted to 16 pairs, transposed in registers into
// 16 panel rows of 16 columns. (A column at a time, scattering its pairs 128 bytes apart,
// this was a quarter of a one-step bfloat16 LSTM call at batch 64, hidden size 512.)
template <typename T>
GATEDRNN_BF16_TARGET void pack_columns(const T* const* columns, int64_t k, int64_t n,
                                       uint16_t* dst) {
  const int64_t kp = bf16_padded_k(k), panel = kp * kBf16PanelWidth;
  for (int64_t p = 0; p * kBf16PanelWidth < n; ++p) {
    const int64_t j0 = p * kBf16PanelWidth, cols = std::min(kBf16PanelWidth, n - j0);
    uint16_t* out = dst + p * panel;
    for (int64_t half = 0; half < 2; ++half) {
      const int64_t c0 = 16 * half, count = std::clamp<int64_t>(cols - c0, 0, 16);
      for (int64_t kk = 0; kk < kp; kk += 32) {
        __m512i v[16];
        for (int64_t j = 0; j < 16; ++j) {
          if (j < count) {
            v[j] = column_pairs(columns[j0 + c0 + j] + kk, k - kk);
          } else {
            v[j] = _mm512_setzero_si512();
          }
        }
        transpose16(v);  // v[q]: pair q of k for the 16 columns
        for (int64_t q = 0; q < 16; ++q) {
          _mm512_storeu_si512(out + (kk / 2 + q) * 2 * kBf16PanelWidth + 2 * c0, v[q]);
        }
      }
    }
  }
}

GATEDRNN_BF16_TARGET void pack_b_columns(const float* const* columns, int64_t k, int64_t n,
                                         uint16_t* dst) {
  pack_columns(columns, k, n, dst);
}
GATEDRNN_BF16_TARGET void pack_b_columns_bf16(const uint16_t* const* columns, int64_t k,
                                              int64_t n, uint16_t* dst) {
  pack_columns(columns, k, n, dst);
}

// torch's rounding to bfloat16 (ATen's vectorized float -> bfloat16, as Tensor.to runs it)
// on 16 floats: add 0x7fff and the lowest kept bit, keep the upper half; NaN becomes 0xffff
// (a NaN). Not VCVTNEPS2BF16, which flushes denormals.
GATEDRNN_BF16_TARGET inline __m256i rounded_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                                  _mm512_set1_epi32(0xffff));
  return _mm512_cvtepi32_epi16(rounded);
}

GATEDRNN_BF16_TARGET void round_rows(const float* src, int64_t src_ld, int64_t rows,
                                     int64_t cols, uint16_t* dst, int64_t dst_ld) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; j += 16) {
      const int64_t count = std::min<int64_t>(16, cols - j);
      const __mmask16 mask = __mmask16((1u << count) - 1);
      const __m512 v = _mm512_maskz_loadu_ps(mask, src + r * src_ld + j);
      _mm256_mask_storeu_epi16(dst + r * dst_ld + j, mask, rounded_bf16(v));
    }
  }
}

// ---------------------------------------------------------------------------------------
// AMX: C in 16 x 16 float32 tiles, two by two (32 rows by one 32-column panel); A's rows
// (16 x 32 bfloat16 a tile) from a row-major bfloat16 copy of a block of A, B's tiles
// (16 pairs of k by 16 columns) straight from the panels: the panel row holding one
// pair of k for 32 columns is 128 bytes, the first or second half of it one tile row.
// Tiles 0-3: C; 4, 5: A; 6, 7: B.

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// One 16 x 16 tile of C: c0 is its first element, `rows` x `cols` of it inside C.
struct CTile {
  float* c0;
  int64_t rows, cols;
  bool full() const { return rows == 16 && cols == 16; }
};

// The tile's starting value beta * C (zeros outside C) in buf[16][16], or null when the
// tile can be loaded from C itself (beta == 1, whole tile).
const float* c_start(const CTile& t, float beta, int64_t ldc, float* buf) {
  if (beta == 1.0f && t.full()) return nullptr;
  std::memset(buf, 0, sizeof(float) * 256);
  for (int64_t r = 0; r < t.rows; ++r) {
    for (int64_t j = 0; j < t.cols; ++j) buf[r * 16 + j] = beta * t.c0[r * ldc + j];
  }
  return buf;
}

void c_finish(const CTile& t, int64_t ldc, const float* buf) {
  for (int64_t r = 0; r < t.rows; ++r) {
    std::memcpy(t.c0 + r * ldc, buf + r * 16, sizeof(float) * t.cols);
  }
}

// The 32-row (two) or 16-row (one) form, for one panel over kn of k (a multiple of 32)
// from a and panel on; a's rows are kp apart.
template <bool two>
__attribute__((target("amx-tile,amx-bf16"))) void amx_panel(
    const uint16_t* a, int64_t kp, int64_t kn, const uint16_t* panel, const CTile (&ct)[4],
    float beta, int64_t ldc, float (*buf)[256]) {
  const int64_t lda = kp * 2;  // bytes
  const bool zero = beta == 0.0f;
  // The C tiles' starting values.
  const float* start[4] = {};
  for (int t = 0; t < (two ? 4 : 2); ++t) {
    if (!zero) start[t] = c_start(ct[t], beta, ldc, buf[t]);
  }
#define GATEDRNN_AMX_START(T)                                                   \
  if (zero) {                                                                   \
    _tile_zero(T);                                                              \
  } else if (start[T]) {                                                        \
    _tile_loadd(T, start[T], 64);                                               \
  } else {                                                                      \
    _tile_loadd(T, ct[T].c0, ldc * 4);                                          \
  }
  GATEDRNN_AMX_START(0)
  GATEDRNN_AMX_START(1)
  if (two) {
    GATEDRNN_AMX_START(2)
    GATEDRNN_AMX_START(3)
  }
#undef GATEDRNN_AMX_START
  for (int64_t kc = 0; kc < kn; kc += 32) {
    const uint16_t* bk = panel + kc * kBf16PanelWidth;  // 16 panel rows of 64 elements
    _tile_loadd(4, a + kc, lda);
    _tile_loadd(6, bk, 128);
    _tile_loadd(7, bk + 32, 128);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if (two) {
      _tile_loadd(5, a + 16 * kp + kc, lda);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
#define GATEDRNN_AMX_STORE(T)                                                   \
  if (ct[T].full()) {                                                           \
    _tile_stored(T, ct[T].c0, ldc * 4);                                         \
  } else {                                                                      \
    _tile_stored(T, buf[T], 64);                                                \
    c_finish(ct[T], ldc, buf[T]);                                               \
  }
  GATEDRNN_AMX_STORE(0)
  GATEDRNN_AMX_STORE(1)
  if (two) {
    GATEDRNN_AMX_STORE(2)
    GATEDRNN_AMX_STORE(3)
  }
#undef GATEDRNN_AMX_STORE
}

// A's rows [0, m) in bfloat16, row-major [mp][kp] (zeros past m rows and k columns), from
// a(r, kk) = a[r * a_row + kk * a_step].
GATEDRNN_BF16_TARGET void pack_a_rows(const float* a, int64_t a_row, int64_t a_step, int64_t m,
                                      int64_t mp, int64_t k, int64_t kp, uint16_t* dst) {
  if (a_step == 1) {
    for (int64_t r = 0; r < mp; ++r) {
      for (int64_t kk = 0; kk < kp; kk += 32) {
        convert32(a + r * a_row + kk, r < m ? k - kk : 0, dst + r * kp + kk);
      }
    }
    return;
  }
  if (a_row == 1) {
    // A transposed (a weight gradient's gate gradients): 16 rows by 32 k at a time, read
    // along the rows, converted in pairs of k and transposed as 16 x 16 dwords.
    for (int64_t r0 = 0; r0 < mp; r0 += 16) {
      const int64_t rows = std::clamp<int64_t>(m - r0, 0, 16);
      for (int64_t kk = 0; kk < kp; kk += 32) {
        __m512i block[16];  // block[q]: the 16 rows' pairs of k = kk + 2q, kk + 2q + 1
        for (int64_t q = 0; q < 16; ++q) {
          const int64_t k0 = kk + 2 * q;
          const __m512 x = k0 < k ? load_or_zero(a + r0 + k0 * a_step, rows) : _mm512_setzero_ps();
          const __m512 y = k0 + 1 < k ? load_or_zero(a + r0 + (k0 + 1) * a_step, rows)
                                      : _mm512_setzero_ps();
          block[q] = pairs(x, y);
        }
        transpose16(block);
        for (int64_t r = 0; r < 16; ++r) _mm512_storeu_si512(dst + (r0 + r) * kp + kk, block[r]);
      }
    }
    return;
  }
  for (int64_t r = 0; r < mp; ++r) {
    for (int64_t kk = 0; kk < kp; ++kk) {
      dst[r * kp + kk] = r < m && kk < k ? to_bf16(a[r * a_row + kk * a_step]) : 0;
    }
  }
}

// Loaded at every call: the tile configuration belongs to the thread, and other code on
// it (oneDNN's AMX kernels, inside torch) sets its own.
__attribute__((target("amx-tile,amx-bf16"))) void amx_configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

// C[:mi, :n] of one block of rows, whose A is packed (pack_a_rows, rows kp apart), tiles
// configured.
__attribute__((target("amx-tile,amx-bf16"))) void amx_rows(
    int64_t mi, int64_t n, int64_t kp, const uint16_t* ab, const uint16_t* b, int64_t b_panel,
    float beta, float* c, int64_t ldc) {
  const int64_t panels = (n + kBf16PanelWidth - 1) / kBf16PanelWidth;
  alignas(64) float buf[4][256];
  // A group of 32 rows against every panel, over all of k (chunks of k that fit L1,
  // the sums carried through C, were no faster: 5.0-5.6 ms against 4.0 for a weight
  // gradient (m, n, k) = (2048, 512, 1024) on one Sapphire Rapids core, and 79 us either
  // way for a step (64, 1024, 512): the tile loads, not the caches, bound these tiles).
  for (int64_t r0 = 0; r0 < mi; r0 += 32) {
    const bool two = mi - r0 > 16;
    const uint16_t* at = ab + r0 * kp;
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t j0 = p * kBf16PanelWidth, cols = std::min(kBf16PanelWidth, n - j0);
      CTile ct[4];
      for (int t = 0; t < 4; ++t) {
        const int64_t tr = r0 + (t / 2) * 16, tc = (t % 2) * 16;
        ct[t] = {c + tr * ldc + j0 + tc, std::clamp<int64_t>(mi - tr, 0, 16),
                 std::clamp<int64_t>(cols - tc, 0, 16)};
      }
      if (two) {
        amx_panel<true>(at, kp, kp, b + p * b_panel, ct, beta, ldc, buf);
      } else {
        amx_panel<false>(at, kp, kp, b + p * b_panel, ct, beta, ldc, buf);
      }
    }
  }
}

__attribute__((target("amx-tile,amx-bf16"))) void gemm_amx(
    int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row, int64_t a_step,
    const uint16_t* b, int64_t b_panel, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  const int64_t kp = bf16_padded_k(k);
  const int64_t rows = block_rows(kp, 32);
  thread_local std::vector<uint16_t> a_buffer;
  uint16_t* ab = scratch(a_buffer, std::min(rows, (m + 31) / 32 * 32) * kp);
  amx_configure();
  for (int64_t i0 = 0; i0 < m; i0 += rows) {
    const int64_t mi = std::min(rows, m - i0), mp = (mi + 15) / 16 * 16;
    pack_a_rows(a + i0 * a_row, a_row, a_step, mi, mp, k, kp, ab);
    amx_rows(mi, n, kp, ab, b, b_panel, beta, c + i0 * ldc, ldc);
  }
  _tile_release();
}

// A packed whole for gemm_packed_amx: the blocks gemm_amx packs one at a time, each at
// its first row, so a block's rows are where gemm_amx has them.
void pack_a_amx(const float* a, int64_t a_row, int64_t a_step, int64_t m, int64_t k,
                uint16_t* dst) {
  const int64_t kp = bf16_padded_k(k), rows = block_rows(kp, 32);
  for (int64_t i0 = 0; i0 < m; i0 += rows) {
    const int64_t mi = std::min(rows, m - i0), mp = (mi + 15) / 16 * 16;
    pack_a_rows(a + i0 * a_row, a_row, a_step, mi, mp, k, kp, dst + i0 * kp);
  }
}

// pack_a_amx from bfloat16 rows: each row's k copied, zeros past k and past m rows.
void pack_a_bf16_amx(const uint16_t* a, int64_t lda, int64_t m, int64_t k, uint16_t* dst) {
  const int64_t kp = bf16_padded_k(k), mp = (m + 15) / 16 * 16;
  for (int64_t r = 0; r < mp; ++r) {
    uint16_t* d = dst + r * kp;
    const int64_t copied = r < m ? k : 0;
    if (copied > 0) std::memcpy(d, a + r * lda, sizeof(uint16_t) * copied);
    std::fill(d + copied, d + kp, uint16_t(0));
  }
}

__attribute__((target("amx-tile,amx-bf16"))) void gemm_packed_amx(
    int64_t m, int64_t n, int64_t k, const uint16_t* a, const uint16_t* b, int64_t b_panel,
    float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  const int64_t kp = bf16_padded_k(k), rows = block_rows(kp, 32);
  amx_configure();
  for (int64_t i0 = 0; i0 < m; i0 += rows) {
    amx_rows(std::min(rows, m - i0), n, kp, a + i0 * kp, b, b_panel, beta, c + i0 * ldc, ldc);
  }
  _tile_release();
}

// ---------------------------------------------------------------------------------------
// AVX512_BF16: a tile of R rows by one 32-column panel in 2R float32 registers; per pair
// of k, two loads of B, R broadcasts of A's pair and 2R VDPBF16PS.

constexpr int64_t kTileRows = 12;

// One pair of k across a tile of R rows: each row's pair (a dword of ak) broadcast against
// B's two vectors of 16 column pairs.
template <int64_t R>
GATEDRNN_BF16_TARGET inline void tile_pair(__m512 (&acc0)[R], __m512 (&acc1)[R],
                                           const uint32_t* ak, __m512bh b0, __m512bh b1) {
#pragma GCC unroll 16
  for (int64_t r = 0; r < R; ++r) {
    const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(ak[r]));
    acc0[r] = _mm512_dpbf16_ps(acc0[r], av, b0);
    acc1[r] = _mm512_dpbf16_ps(acc1[r], av, b1);
  }
}

// f(std::integral_constant<int64_t, h>()) for a tile height h of for_each_tile's.
template <typename F>
void with_tile_height(int64_t h, const F& f) {
  switch (h) {
    case 12:
      return f(std::integral_constant<int64_t, 12>());
    case 8:
      return f(std::integral_constant<int64_t, 8>());
    case 4:
      return f(std::integral_constant<int64_t, 4>());
    case 2:
      return f(std::integral_constant<int64_t, 2>());
    default:
      return f(std::integral_constant<int64_t, 1>());
  }
}

// The mask of C's columns [16 * half, 16 * half + 16) of a panel `cols` of whose 32
// columns are inside C (all of them when full).
template <bool full>
inline __mmask16 panel_half_mask(int64_t cols, int64_t half) {
  return full ? __mmask16(0xffff)
              : __mmask16((1u << std::clamp<int64_t>(cols - 16 * half, 0, 16)) - 1);
}

// C: float32 (beta * C added), or bfloat16 (uint16_t, beta 0), the sums rounded into it
// as round_rows rounds them: a one-step call's bfloat16 weight gradient (a pass over k of
// 64 rows) went into a float32 block and was rounded from there, round_rows 6% of the
// samples of a decoder of two bfloat16 RNNCells at (N, H) = (64, 512), training. Its
// backward, ms a step, medians in one process alternating: 1.436 -> 1.391 (torch.nn's
// 1.217); GRUCells 3.57 -> 3.49, LSTMCells 6.50 -> 6.42 (AMD Zen 4).
template <int64_t R, bool full, typename CT>
GATEDRNN_BF16_TARGET inline void bf16_tile(int64_t k2, const uint32_t* a, const uint16_t* b,
                                           int64_t cols, float beta, CT* c, int64_t ldc,
                                           const float* partial, int64_t ld_partial) {
  constexpr bool round = std::is_same_v<CT, uint16_t>;
  const __mmask16 m0 = panel_half_mask<full>(cols, 0), m1 = panel_half_mask<full>(cols, 1);
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 16
  for (int64_t r = 0; r < R; ++r) {
    if (round && partial != nullptr) {
      acc0[r] = _mm512_maskz_loadu_ps(m0, partial + r * ld_partial);
      acc1[r] = _mm512_maskz_loadu_ps(m1, partial + r * ld_partial + 16);
    } else if (round || beta == 0.0f) {
      acc0[r] = _mm512_setzero_ps();
      acc1[r] = _mm512_setzero_ps();
    } else if constexpr (!round) {
      const __m512 vb = _mm512_set1_ps(beta);
      acc0[r] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m0, c + r * ldc), vb);
      acc1[r] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m1, c + r * ldc + 16), vb);
    }
  }
  for (int64_t kk = 0; kk < k2; ++kk) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + kk * 64);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + kk * 64 + 32);
    tile_pair<R>(acc0, acc1, a + kk * R, b0, b1);
  }
#pragma GCC unroll 16
  for (int64_t r = 0; r < R; ++r) {
    if constexpr (round) {
      _mm256_mask_storeu_epi16(c + r * ldc, m0, rounded_bf16(acc0[r]));
      _mm256_mask_storeu_epi16(c + r * ldc + 16, m1, rounded_bf16(acc1[r]));
    } else {
      _mm512_mask_storeu_ps(c + r * ldc, m0, acc0[r]);
      _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc1[r]);
    }
  }
}

// Tiles of kTileRows rows, then the remainder in tiles of 8, 4, 2, 1.
template <typename F>
void for_each_tile(int64_t m, const F& f) {
  int64_t r = 0;
  for (; r + kTileRows <= m; r += kTileRows) f(r, kTileRows);
  for (int64_t h = 8; h >= 1; h /= 2) {
    if (r + h <= m) {
      f(r, h);
      r += h;
    }
  }
}

// v[r]: 16 consecutive pairs of k of row r of a tile of h rows (v[h..15] zero), stored
// into the tile's [k / 2][h] layout at dst (its first pair's line).
GATEDRNN_BF16_TARGET inline void store_tile_pairs(__m512i (&v)[16], int64_t h, uint32_t* dst) {
  transpose16(v);  // v[i]: pair i of the tile's rows
  const __mmask16 lanes = __mmask16((1u << h) - 1);
  for (int64_t i = 0; i < 16; ++i) _mm512_mask_storeu_epi32(dst + i * h, lanes, v[i]);
}

// h rows of A as pairs of k, [kp / 2][h] dwords (zeros past k), from
// a(r, kk) = a[r * a_row + kk * a_step].
GATEDRNN_BF16_TARGET void pack_a_pairs(const float* a, int64_t a_row, int64_t a_step, int64_t h,
                                       int64_t k, int64_t kp, uint32_t* dst) {
  if (a_row == 1) {
    // A transposed: two rows of k give the h pairs of a dst row, stored under a mask
    // (through a line buffer and a copy of h dwords, this packing was 1.8% of the samples
    // of one-step calls of 2 bfloat16 GRU layers at (N, H) = (64, 512) in training).
    const __mmask16 lanes = __mmask16((1u << h) - 1);
    for (int64_t kk = 0; kk < kp; kk += 2) {
      const __m512 x = kk < k ? load_or_zero(a + kk * a_step, h) : _mm512_setzero_ps();
      const __m512 y = kk + 1 < k ? load_or_zero(a + (kk + 1) * a_step, h) : _mm512_setzero_ps();
      _mm512_mask_storeu_epi32(dst + (kk / 2) * h, lanes, pairs(x, y));
    }
    return;
  }
  if (a_step == 1) {
    // 32 k of each row at a time, rounded into 16 pairs and transposed in registers.
    // Made a row at a time through a line buffer, then a pair at a time into the tile,
    // this packing (every step's state) was 4% of a bfloat16 LSTM (100, 16, 128, 128)
    // training step (AMD Zen 4).
    for (int64_t kk = 0; kk < kp; kk += 32) {
      __m512i v[16];
      for (int64_t r = 0; r < 16; ++r) {
        v[r] = r < h ? column_pairs(a + r * a_row + kk, k - kk) : _mm512_setzero_si512();
      }
      store_tile_pairs(v, h, dst + (kk / 2) * h);
    }
    return;
  }
  for (int64_t k2 = 0; k2 < kp / 2; ++k2) {
    for (int64_t r = 0; r < h; ++r) {
      const int64_t k0 = 2 * k2, k1 = k0 + 1;
      const uint32_t lo = k0 < k ? to_bf16(a[r * a_row + k0 * a_step]) : 0;
      const uint32_t hi = k1 < k ? to_bf16(a[r * a_row + k1 * a_step]) : 0;
      dst[k2 * h + r] = lo | (hi << 16);
    }
  }
}

// C[:mi, :n] of one block of rows, whose A is packed (pack_a_pairs, tile by tile, the
// tile at row r0 r0 * k2 dwords in). A tile at a time across all of B's panels: the
// tile's A stays in L1 while B streams past it. Panel by panel across the tiles, neither
// A's tiles nor a panel (32 KiB at k = 512) stayed in L1 with the other, and the kernels
// ran at 215 GFLOP/s against 221 a tile at a time at (m, n, k) = (64, 1024, 512), 172
// against 201 at (256, 1024, 128) (one thread, AMD Zen 4; its VDPBF16PS loop 231).
template <typename CT>
GATEDRNN_BF16_TARGET void avx512_rows(int64_t mi, int64_t n, int64_t k2, const uint32_t* ab,
                                      const uint16_t* b, int64_t b_panel, float beta, CT* c,
                                      int64_t ldc, const float* partial = nullptr,
                                      int64_t ld_partial = 0) {
  const int64_t panels = (n + kBf16PanelWidth - 1) / kBf16PanelWidth;
  for_each_tile(mi, [&](int64_t r0, int64_t h) {
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t j0 = p * kBf16PanelWidth, cols = std::min(kBf16PanelWidth, n - j0);
      CT* ct = c + r0 * ldc + j0;
      const float* pt = partial != nullptr ? partial + r0 * ld_partial + j0 : nullptr;
      with_tile_height(h, [&](auto height) {
        constexpr int64_t R = decltype(height)::value;
        if (cols == kBf16PanelWidth) {
          bf16_tile<R, true, CT>(k2, ab + r0 * k2, b + p * b_panel, cols, beta, ct, ldc, pt,
                                 ld_partial);
        } else {
          bf16_tile<R, false, CT>(k2, ab + r0 * k2, b + p * b_panel, cols, beta, ct, ldc, pt,
                                  ld_partial);
        }
      });
    }
  });
}

// f(i0, mi) for each cache block of A's m rows (k of them a row): rows [i0, i0 + mi),
// packed by the AVX512_BF16 kernels tile by tile at dword i0 * kp / 2 of A's copy.
template <typename F>
void for_each_packed_block(int64_t m, int64_t k, const F& f) {
  const int64_t rows = block_rows(bf16_padded_k(k), kTileRows);
  for (int64_t i0 = 0; i0 < m; i0 += rows) f(i0, std::min(rows, m - i0));
}

// A's rows [0, mi) of a block as pairs of k, tile by tile: [k2][h] for a tile of height h.
GATEDRNN_BF16_TARGET void pack_a_block(const float* a, int64_t a_row, int64_t a_step,
                                       int64_t mi, int64_t k, int64_t kp, uint32_t* dst) {
  for_each_tile(mi, [&](int64_t r0, int64_t h) {
    pack_a_pairs(a + r0 * a_row, a_row, a_step, h, k, kp, dst + r0 * (kp / 2));
  });
}

GATEDRNN_BF16_TARGET void gemm_avx512(int64_t m, int64_t n, int64_t k, const float* a,
                                      int64_t a_row, int64_t a_step, const uint16_t* b,
                                      int64_t b_panel, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  const int64_t kp = bf16_padded_k(k), k2 = kp / 2;
  thread_local std::vector<uint32_t> a_buffer;
  uint32_t* ab = scratch(a_buffer, std::min(block_rows(kp, kTileRows), m) * k2);
  for_each_packed_block(m, k, [&](int64_t i0, int64_t mi) {
    pack_a_block(a + i0 * a_row, a_row, a_step, mi, k, kp, ab);
    avx512_rows(mi, n, k2, ab, b, b_panel, beta, c + i0 * ldc, ldc);
  });
}

// A packed whole for gemm_packed_avx512: the blocks gemm_avx512 packs one at a time, each
// at its first row (m * kp / 2 dwords in all).
GATEDRNN_BF16_TARGET void pack_a_avx512(const float* a, int64_t a_row, int64_t a_step,
                                        int64_t m, int64_t k, uint16_t* dst) {
  const int64_t kp = bf16_padded_k(k);
  uint32_t* d = reinterpret_cast<uint32_t*>(dst);
  for_each_packed_block(m, k, [&](int64_t i0, int64_t mi) {
    pack_a_block(a + i0 * a_row, a_row, a_step, mi, k, kp, d + i0 * (kp / 2));
  });
}

// pack_a_avx512 from bfloat16 rows: a tile's pairs of k are the rows' consecutive pairs
// of bfloat16 (the low half the even k, as the hardware reads them). 16 pairs of each of
// the tile's rows at a time (zeros past k), transposed in registers and h lanes stored:
// a pair at a time, this packing (x's chunks and every step's state) was 8% of a bfloat16
// LSTM (100, 16, 128, 128) inference call (AMD Zen 4), and took 59 us against 22 for 1600
// rows of k = 128 on one thread.
GATEDRNN_BF16_TARGET void pack_a_bf16_avx512(const uint16_t* a, int64_t lda, int64_t m,
                                             int64_t k, uint16_t* dst) {
  const int64_t k2 = bf16_padded_k(k) / 2;
  uint32_t* d = reinterpret_cast<uint32_t*>(dst);
  for_each_packed_block(m, k, [&](int64_t i0, int64_t mi) {
    for_each_tile(mi, [&](int64_t r0, int64_t h) {
      uint32_t* tile = d + (i0 + r0) * k2;
      const uint16_t* first = a + (i0 + r0) * lda;
      for (int64_t q0 = 0; q0 < k2; q0 += 16) {
        __m512i v[16];
        for (int64_t r = 0; r < 16; ++r) {
          v[r] = r < h ? column_pairs(first + r * lda + 2 * q0, k - 2 * q0)
                       : _mm512_setzero_si512();
        }
        store_tile_pairs(v, h, tile + q0 * h);
      }
    });
  });
}

GATEDRNN_BF16_TARGET void gemm_packed_avx512(int64_t m, int64_t n, int64_t k, const uint16_t* a,
                                             const uint16_t* b, int64_t b_panel, float beta,
                                             float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  const int64_t k2 = bf16_padded_k(k) / 2;
  const uint32_t* d = reinterpret_cast<const uint32_t*>(a);
  for_each_packed_block(m, k, [&](int64_t i0, int64_t mi) {
    avx512_rows(mi, n, k2, d + i0 * k2, b, b_panel, beta, c + i0 * ldc, ldc);
  });
}

GATEDRNN_BF16_TARGET void gemm_packed_round_avx512(int64_t m, int64_t n, int64_t k,
                                                   const uint16_t* a, const uint16_t* b,
                                                   int64_t b_panel, const float* partial,
                                                   int64_t ld_partial, uint16_t* c,
                                                   int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  const int64_t k2 = bf16_padded_k(k) / 2;
  const uint32_t* d = reinterpret_cast<const uint32_t*>(a);
  for_each_packed_block(m, k, [&](int64_t i0, int64_t mi) {
    avx512_rows(mi, n, k2, d + i0 * k2, b, b_panel, 0.0f, c + i0 * ldc, ldc,
                partial != nullptr ? partial + i0 * ld_partial : nullptr, ld_partial);
  });
}

// ---------------------------------------------------------------------------------------
// gemm_w_rows (gemm_bf16.h): the product of a call of few steps, C = bf16(A) @ W^T, with
// W's rows read where they are instead of packed into panels, and A (the step's rows, a
// few KiB) packed as the panels instead: each pair of k of a W row, one dword, is
// broadcast against the pair for 32 rows of A. The tile holds C^T (W's rows by A's rows)
// and is transposed on its way to and from C. Every output is the chain the kernels make
// on the usual operands (beta * c, then the pairs of k in order, the padding's zero pairs
// included): products and sums commute exactly, so the same bits.

// v[r] (r < h) holds C[j][r] in lane j, for 16 rows j of C from c on: stored transposed,
// the h columns of each row j < count. load_transposed: the reverse, zeros past count.
GATEDRNN_BF16_TARGET inline void store_transposed(__m512i (&v)[16], int64_t h, int64_t count,
                                                  float* c, int64_t ldc) {
  transpose16(v);  // v[j]: row j of C, lanes r < h
  const __mmask16 lanes = __mmask16((1u << h) - 1);
  for (int64_t j = 0; j < count; ++j) {
    _mm512_mask_storeu_ps(c + j * ldc, lanes, _mm512_castsi512_ps(v[j]));
  }
}
GATEDRNN_BF16_TARGET inline void load_transposed(__m512i (&v)[16], int64_t h, int64_t count,
                                                 const float* c, int64_t ldc) {
  const __mmask16 lanes = __mmask16((1u << h) - 1);
  for (int64_t j = 0; j < 16; ++j) {
    v[j] = j < count ? _mm512_castps_si512(_mm512_maskz_loadu_ps(lanes, c + j * ldc))
                     : _mm512_setzero_si512();
  }
  transpose16(v);  // v[r]: column r of C, lanes j
}

// The pair q of k of a W row (zeros past k), as a dword.
GATEDRNN_BF16_TARGET inline int32_t w_pair(const uint16_t* row, int64_t q, int64_t k) {
  const uint32_t lo = 2 * q < k ? row[2 * q] : 0, hi = 2 * q + 1 < k ? row[2 * q + 1] : 0;
  return static_cast<int32_t>(lo | (hi << 16));
}

// R rows of W (row r at w + r * ldw) against one panel of A's rows (cols of its 32).
// next: the next tile's rows (kTileRows of them), whose lines are asked for as this one's
// are read, or null. The weights come from L3 at every call (a model's other weights and
// gradients pass through L2 in between), and twelve rows of a tile are twelve streams too
// short for the prefetchers: with it, one-step calls of 2 bfloat16 layers at batch 64
// (ms, same process, alternating): LSTM H = 512 inference 2.57 -> 2.31, training 8.17 ->
// 7.91, GRU training H = 256 2.78 -> 2.66, H = 512 6.26 -> 5.91; inference at H = 256 and
// GRU H = 512 unchanged (AMD Zen 4).
template <int64_t R>
GATEDRNN_BF16_TARGET inline void w_rows_tile(int64_t k, int64_t k2, const uint16_t* w,
                                             int64_t ldw, const uint16_t* b, int64_t cols,
                                             float beta, float* c, int64_t ldc,
                                             const uint16_t* next) {
  __m512 acc0[R], acc1[R];
  if (beta == 0.0f) {
#pragma GCC unroll 16
    for (int64_t r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
    __m512i v[16];
    load_transposed(v, R, std::min<int64_t>(cols, 16), c, ldc);
#pragma GCC unroll 16
    for (int64_t r = 0; r < R; ++r) acc0[r] = _mm512_mul_ps(_mm512_castsi512_ps(v[r]), vb);
    load_transposed(v, R, std::clamp<int64_t>(cols - 16, 0, 16), c + 16 * ldc, ldc);
#pragma GCC unroll 16
    for (int64_t r = 0; r < R; ++r) acc1[r] = _mm512_mul_ps(_mm512_castsi512_ps(v[r]), vb);
  }
  const int64_t whole = k / 2;  // pairs read in place; then the last odd k and the padding
  for (int64_t q = 0; q < k2; ++q) {
    uint32_t pair[R];
    if (next != nullptr && q % 16 == 0) {  // a line of each of the next tile's rows
      for (int64_t r = 0; r < kTileRows; ++r) __builtin_prefetch(next + r * ldw + 2 * q);
    }
    if (q < whole) {
#pragma GCC unroll 16
      for (int64_t r = 0; r < R; ++r) std::memcpy(&pair[r], w + r * ldw + 2 * q, 4);
    } else {
      for (int64_t r = 0; r < R; ++r) pair[r] = w_pair(w + r * ldw, q, k);
    }
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + q * 64);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + q * 64 + 32);
    tile_pair<R>(acc0, acc1, pair, b0, b1);
  }
  __m512i v[16];
#pragma GCC unroll 16
  for (int64_t r = 0; r < 16; ++r) {
    v[r] = r < R ? _mm512_castps_si512(acc0[r]) : _mm512_setzero_si512();
  }
  store_transposed(v, R, std::min<int64_t>(cols, 16), c, ldc);
  if (cols <= 16) return;
#pragma GCC unroll 16
  for (int64_t r = 0; r < 16; ++r) {
    v[r] = r < R ? _mm512_castps_si512(acc1[r]) : _mm512_setzero_si512();
  }
  store_transposed(v, R, cols - 16, c + 16 * ldc, ldc);
}

GATEDRNN_BF16_TARGET void gemm_w_rows_avx512(int64_t m, int64_t n, int64_t k,
                                             const uint16_t* b, int64_t b_panel,
                                             const uint16_t* w, int64_t ldw, float beta,
                                             float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  // A tile of W's rows (12 KiB at k = 512) stays in L1 while A's panels pass it.
  const int64_t k2 = bf16_padded_k(k) / 2;
  for_each_tile(n, [&](int64_t r0, int64_t h) {
    const auto tile = h == 12 ? &w_rows_tile<12>
                      : h == 8 ? &w_rows_tile<8>
                      : h == 4 ? &w_rows_tile<4>
                      : h == 2 ? &w_rows_tile<2>
                               : &w_rows_tile<1>;
    const uint16_t* next = r0 + h + kTileRows <= n ? w + (r0 + h) * ldw : nullptr;
    for (int64_t p = 0; p * kBf16PanelWidth < m; ++p) {
      const int64_t j0 = p * kBf16PanelWidth;
      tile(k, k2, w + r0 * ldw, ldw, b + p * b_panel, std::min(kBf16PanelWidth, m - j0), beta,
           c + j0 * ldc + r0, ldc, p == 0 ? next : nullptr);
    }
  });
}

// ---------------------------------------------------------------------------------------
// gemm_b_rows (gemm_bf16.h): C = bf16(A) @ B with B's bfloat16 rows read where they are,
// for an A of few rows (a one-step call's input gradient, against the whole of w_ih),
// whose B would be packed for only those rows' products. The pair q of k for 32 columns
// is rows 2q and 2q + 1 interleaved 16 bits at a time (VPUNPCKLWD / VPUNPCKHWD, within
// each 128-bit lane): the low vector holds the panel's columns 0-3, 8-11, 16-19, 24-27
// as pairs, the high one 4-7, 12-15, 20-23, 28-31. The accumulators keep that order and
// are put right on the way to and from C; each output is the chain bf16_tile makes on
// the packed panel (the same pairs in the same order, zero pairs past k), so the bits.

// Lanes of the two accumulators (0-15 the low one, 16-31 the high one) holding C's
// columns 0-15 and 16-31 of the panel; and the reverse, C's lanes (0-15 columns 0-15,
// 16-31 columns 16-31) that fill the low and the high accumulator.
GATEDRNN_BF16_TARGET inline __m512i b_rows_columns_low() {
  return _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
}
GATEDRNN_BF16_TARGET inline __m512i b_rows_columns_high() {
  return _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
}
GATEDRNN_BF16_TARGET inline __m512i b_rows_pairs_low() {
  return _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
}
GATEDRNN_BF16_TARGET inline __m512i b_rows_pairs_high() {
  return _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
}

// R rows of packed A (a tile of pack_a's layout, [k2][R] dwords) against 32 columns of B
// from b on (rows ldb apart; `cols` of them inside B). ahead > 0: B's rows that many
// pairs of k further on are asked for as these are read.
// C as bf16_tile's: float32, or bfloat16 (uint16_t, beta 0) rounded into.
template <int64_t R, bool full, typename CT>
GATEDRNN_BF16_TARGET inline void b_rows_tile(int64_t k, int64_t k2, const uint32_t* a,
                                             const uint16_t* b, int64_t ldb, int64_t cols,
                                             float beta, CT* c, int64_t ldc, int64_t ahead,
                                             const float* partial, int64_t ld_partial) {
  constexpr bool round = std::is_same_v<CT, uint16_t>;
  const __mmask32 in_b = full ? ~__mmask32(0) : __mmask32((uint64_t(1) << cols) - 1);
  const __mmask16 m0 = panel_half_mask<full>(cols, 0), m1 = panel_half_mask<full>(cols, 1);
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 16
  for (int64_t r = 0; r < R; ++r) {
    if (round && partial != nullptr) {
      const __m512 c0 = _mm512_maskz_loadu_ps(m0, partial + r * ld_partial);
      const __m512 c1 = _mm512_maskz_loadu_ps(m1, partial + r * ld_partial + 16);
      acc0[r] = _mm512_permutex2var_ps(c0, b_rows_pairs_low(), c1);
      acc1[r] = _mm512_permutex2var_ps(c0, b_rows_pairs_high(), c1);
    } else if (round || beta == 0.0f) {
      acc0[r] = acc1[r] = _mm512_setzero_ps();
    } else if constexpr (!round) {
      const __m512 vb = _mm512_set1_ps(beta);
      const __m512 c0 = _mm512_maskz_loadu_ps(m0, c + r * ldc);
      const __m512 c1 = _mm512_maskz_loadu_ps(m1, c + r * ldc + 16);
      acc0[r] = _mm512_mul_ps(_mm512_permutex2var_ps(c0, b_rows_pairs_low(), c1), vb);
      acc1[r] = _mm512_mul_ps(_mm512_permutex2var_ps(c0, b_rows_pairs_high(), c1), vb);
    }
  }
  const int64_t whole = k / 2;  // pairs of two rows of B; then the last odd row, zeros
  for (int64_t q = 0; q < k2; ++q) {
    __m512i even, odd;
    if (ahead > 0 && 2 * (q + ahead) + 1 < k) {
      __builtin_prefetch(b + 2 * (q + ahead) * ldb);
      __builtin_prefetch(b + (2 * (q + ahead) + 1) * ldb);
    }
    const uint16_t* row = b + 2 * q * ldb;
    if (q < whole) {
      even = full ? _mm512_loadu_si512(row) : _mm512_maskz_loadu_epi16(in_b, row);
      odd = full ? _mm512_loadu_si512(row + ldb) : _mm512_maskz_loadu_epi16(in_b, row + ldb);
    } else {
      even = 2 * q < k ? _mm512_maskz_loadu_epi16(in_b, row) : _mm512_setzero_si512();
      odd = _mm512_setzero_si512();
    }
    const __m512bh b0 = (__m512bh)_mm512_unpacklo_epi16(even, odd);
    const __m512bh b1 = (__m512bh)_mm512_unpackhi_epi16(even, odd);
    tile_pair<R>(acc0, acc1, a + q * R, b0, b1);
  }
#pragma GCC unroll 16
  for (int64_t r = 0; r < R; ++r) {
    const __m512 low = _mm512_permutex2var_ps(acc0[r], b_rows_columns_low(), acc1[r]);
    const __m512 high = _mm512_permutex2var_ps(acc0[r], b_rows_columns_high(), acc1[r]);
    if constexpr (round) {
      _mm256_mask_storeu_epi16(c + r * ldc, m0, rounded_bf16(low));
      _mm256_mask_storeu_epi16(c + r * ldc + 16, m1, rounded_bf16(high));
    } else {
      _mm512_mask_storeu_ps(c + r * ldc, m0, low);
      _mm512_mask_storeu_ps(c + r * ldc + 16, m1, high);
    }
  }
}

// On A packed by pack_a_avx512 (its blocks, each tile by tile), like gemm_packed_avx512,
// a panel at a time across A's tiles: the panel's lines (64 bytes of each of B's rows),
// fetched for the first tile, are in L2 for the others. That first tile asks for the
// lines 64 rows ahead, B coming from memory or L3 at a call (one-step calls of 2 bfloat16
// GRU layers at (N, H) = (64, 512), training, in one process alternating, medians: B
// packed 4.71 ms a call, read in place 4.66, with the lines asked for 4.53; H = 256 2.61,
// 2.42, 2.44; 128 rows (two steps) 9.98 against 9.91; AMD Zen 4).
constexpr int64_t kBRowsAheadPairs = 32;
template <typename CT>
GATEDRNN_BF16_TARGET void b_rows_avx512(int64_t m, int64_t n, int64_t k, const uint16_t* a,
                                        const uint16_t* b, int64_t ldb, float beta, CT* c,
                                        int64_t ldc, const float* partial = nullptr,
                                        int64_t ld_partial = 0) {
  if (m <= 0 || n <= 0) return;
  const int64_t k2 = bf16_padded_k(k) / 2;
  const uint32_t* d = reinterpret_cast<const uint32_t*>(a);
  for_each_packed_block(m, k, [&](int64_t i0, int64_t mi) {
    for (int64_t j0 = 0; j0 < n; j0 += kBf16PanelWidth) {
      const int64_t cols = std::min(kBf16PanelWidth, n - j0);
      for_each_tile(mi, [&](int64_t r0, int64_t h) {
        const uint32_t* tile = d + (i0 + r0) * k2;
        CT* ct = c + (i0 + r0) * ldc + j0;
        const float* pt =
            partial != nullptr ? partial + (i0 + r0) * ld_partial + j0 : nullptr;
        const int64_t ahead = r0 == 0 ? kBRowsAheadPairs : 0;
        with_tile_height(h, [&](auto height) {
          constexpr int64_t R = decltype(height)::value;
          if (cols == kBf16PanelWidth) {
            b_rows_tile<R, true, CT>(k, k2, tile, b + j0, ldb, cols, beta, ct, ldc, ahead, pt,
                                     ld_partial);
          } else {
            b_rows_tile<R, false, CT>(k, k2, tile, b + j0, ldb, cols, beta, ct, ldc, ahead, pt,
                                      ld_partial);
          }
        });
      });
    }
  });
}
GATEDRNN_BF16_TARGET void gemm_b_rows_avx512(int64_t m, int64_t n, int64_t k, const uint16_t* a,
                                             const uint16_t* b, int64_t ldb, float beta,
                                             float* c, int64_t ldc) {
  b_rows_avx512(m, n, k, a, b, ldb, beta, c, ldc);
}
GATEDRNN_BF16_TARGET void gemm_b_rows_round_avx512(int64_t m, int64_t n, int64_t k,
                                                   const uint16_t* a, const uint16_t* b,
                                                   int64_t ldb, const float* partial,
                                                   int64_t ld_partial, uint16_t* c,
                                                   int64_t ldc) {
  b_rows_avx512(m, n, k, a, b, ldb, 0.0f, c, ldc, partial, ld_partial);
}

// ---------------------------------------------------------------------------------------
// The peaks: the instruction alone, on operands in registers.

__attribute__((target("amx-tile,amx-bf16"))) double peak_amx(int64_t iterations, float* sink) {
  amx_configure();
  alignas(64) uint16_t ones[16 * 32];
  std::fill_n(ones, 16 * 32, uint16_t(0x3c00));  // 2^-7: the sums stay small
  alignas(64) float out[256];
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  for (int64_t i = 0; i < iterations; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  _tile_release();
  *sink = out[0];
  return 2.0 * double(iterations) * 4 * 16 * 16 * 32;
}

GATEDRNN_BF16_TARGET double peak_avx512(int64_t iterations, float* sink) {
  constexpr int kChains = 24;
  __m512 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm512_setzero_ps();
  const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3c00);
  for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 32
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], x, x);
  }
  __m512 total = acc[0];
  for (int j = 1; j < kChains; ++j) total = _mm512_add_ps(total, acc[j]);
  *sink = _mm512_reduce_add_ps(total);
  return 2.0 * double(iterations) * kChains * 32;
}

constexpr GemmBf16Kernels kAmx{"amx",           &gemm_amx,        &pack_a_amx,
                               &pack_a_bf16_amx, &gemm_packed_amx, &round_rows, &pack_b_rows,
                               &pack_b_rows_bf16, &pack_b_columns, &pack_b_columns_bf16,
                               &peak_amx,       true,             nullptr,
                               nullptr,         nullptr,          nullptr};
constexpr GemmBf16Kernels kAvx512Bf16{"avx512_bf16",       &gemm_avx512,
                                      &pack_a_avx512,      &pack_a_bf16_avx512,
                                      &gemm_packed_avx512, &round_rows,      &pack_b_rows,
                                      &pack_b_rows_bf16,   &pack_b_columns,
                                      &pack_b_columns_bf16, &peak_avx512,
                                      false,               &gemm_w_rows_avx512,
                                      &gemm_b_rows_avx512, &gemm_packed_round_avx512,
                                      &gemm_b_rows_round_avx512};

}  // namespace

const GemmBf16Kernels* gemm_bf16_amx() { return &kAmx; }
const GemmBf16Kernels* gemm_bf16_avx512() { return &kAvx512Bf16; }

#elif defined(CPU_CAPABILITY_AVX512)

const GemmBf16Kernels* gemm_bf16_amx() { return nullptr; }
const GemmBf16Kernels* gemm_bf16_avx512() { return nullptr; }

#endif

}  // namespace CPU_CAPABILITY
}  // namespace gatedrnn
