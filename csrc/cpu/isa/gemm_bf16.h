#pragma once
// bfloat16 GEMM micro-kernels (isa/gemm_bf16.cpp): C[m, n] (float32) = bf16(A) @ B + beta * C
// with B in bfloat16 panels, products accumulated in float32. They serve the ops'
// bfloat16 form (cpu/gemm.h, GemmPrecision::kBf16); the AVX-512 build has two, picked at
// run time:
//   amx          Intel AMX (TDPBF16PS on 16 x 16 tiles of C), Sapphire Rapids and later;
//   avx512_bf16  VDPBF16PS on 12 x 32 register tiles (AMD Zen 4, Intel Cooper Lake on).
// Elsewhere there is none and the bfloat16 ops' GEMMs run in float32 (exact products of
// the bfloat16 values, as accurate as that and more).
//
// B's layout, shared by both: panels of kBf16PanelWidth = 32 columns, each
// [kp / 2][32][2] bfloat16 where kp is k rounded up to a multiple of 32 (zeros past k and
// past n): element (kk, j) of the panel at [kk / 2][j][kk % 2], i.e. every row of the
// panel holds one pair of k for its 32 columns, as both instructions read B.
//
// Each output is one chain: it starts from beta * c (or zero) and adds the products of
// A's row and B's column pair by pair of k in order, in float32 with the hardware's
// rounding (denormal inputs and results flushed to zero), so its bits depend neither on
// m, n, the tile it falls in nor on how a caller cuts C into blocks.
#include <cstdint>

#include "../capability.h"

namespace gatedrnn {

constexpr int64_t kBf16PanelWidth = 32;
// k rounded up to a multiple of 32 (one AMX tile of A is 16 rows by 32 k).
inline int64_t bf16_padded_k(int64_t k) { return (k + 31) / 32 * 32; }

// The size of pack_a's result: m rounded up to 16 rows of k rounded up to 32.
inline int64_t bf16_packed_a_elements(int64_t m, int64_t k) {
  return (m + 15) / 16 * 16 * bf16_padded_k(k);
}

struct GemmBf16Kernels {
  const char* name;
  // c[:m, :n] = bf16(a) @ b + beta * c[:m, :n] (c not read when beta == 0), where
  //   a(r, kk) = a[r * a_row + kk * a_step], rounded to bfloat16 (to nearest, ties to even)
  //   b: the panels above, b_panel elements apart.
  void (*gemm)(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row, int64_t a_step,
               const uint16_t* b, int64_t b_panel, float beta, float* c, int64_t ldc);
  // gemm in two parts, for an A that several calls read (a step's state, against each
  // block of a thread's units): pack_a writes A's rows [0, m), rounded, in this kernel's
  // own layout into dst (bf16_packed_a_elements(m, k) elements), and gemm_packed_a is
  // gemm on them, with the same bits.
  void (*pack_a)(const float* a, int64_t a_row, int64_t a_step, int64_t m, int64_t k,
                 uint16_t* dst);
  // or from bfloat16 rows (bits), a(r, kk) = a[r * lda + kk], as they are: a bfloat16
  // op's input, not widened first.
  void (*pack_a_bf16)(const uint16_t* a, int64_t lda, int64_t m, int64_t k, uint16_t* dst);
  void (*gemm_packed_a)(int64_t m, int64_t n, int64_t k, const uint16_t* a, const uint16_t* b,
                        int64_t b_panel, float beta, float* c, int64_t ldc);
  // dst[r * dst_ld + j] = src[r * src_ld + j] in bfloat16 for r < rows, j < cols, rounded as
  // torch rounds (to nearest even, denormals kept, NaN a NaN): a bfloat16 op's
  // results written as its steps make them.
  void (*round_rows)(const float* src, int64_t src_ld, int64_t rows, int64_t cols,
                     uint16_t* dst, int64_t dst_ld);
  // The panels of B [k, n], rounded as A is, into dst: ceil(n / 32) panels of
  // bf16_padded_k(k) * 32 elements each. From B's rows, b(kk, j) = src[kk * ldb + j]:
  void (*pack_b_rows)(const float* src, int64_t ldb, int64_t k, int64_t n, uint16_t* dst);
  // or from bfloat16 rows (bits), as they are:
  void (*pack_b_rows_bf16)(const uint16_t* src, int64_t ldb, int64_t k, int64_t n,
                           uint16_t* dst);
  // or from its columns, b(kk, j) = columns[j][kk] (the rows of a weight W, B = W^T):
  void (*pack_b_columns)(const float* const* columns, int64_t k, int64_t n, uint16_t* dst);
  // or from bfloat16 columns (bits), as they are: a bfloat16 op's weight, not widened first.
  void (*pack_b_columns_bf16)(const uint16_t* const* columns, int64_t k, int64_t n,
                              uint16_t* dst);
  // The kernels' instruction in a register-only loop (the benchmark suite's bfloat16 peak,
  // as isa/fma_peak.h is float32's): `iterations` rounds; returns the floating-point
  // operations done (2 per multiply-add) and writes a result to *sink.
  double (*peak)(int64_t iterations, float* sink);
  // Whether pack_a's (and pack_a_bf16's) layout is A's rows as they are, bf16_padded_k(k)
  // apart: then bfloat16 rows k apart, with k a multiple of 32 and m of 16, need no
  // packing (a step's state read from the previous step's output rows; a chunk of x).
  bool packed_a_is_rows;
  // c[:m, :n] = bf16(a) @ w^T + beta * c[:m, :n] (c not read when beta == 0), with the
  // bfloat16 W [n, k] read where it is (row r at w + r * ldw) and A given as B's panels
  // of A^T (pack_b_columns from A's rows: m columns): the same bits as gemm on A and
  // W^T's panels. For calls of few steps, whose weights would be packed for too few
  // products. Null for AMX (never measured there; its tiles run on packed panels).
  void (*gemm_w_rows)(int64_t m, int64_t n, int64_t k, const uint16_t* b, int64_t b_panel,
                      const uint16_t* w, int64_t ldw, float beta, float* c, int64_t ldc);
  // c[:m, :n] = A @ B + beta * c[:m, :n] (c not read when beta == 0), with A packed by
  // pack_a and B [k, n] bfloat16 rows read where they are, b(kk, j) = b[kk * ldb + j]:
  // the same bits as gemm_packed_a on B's panels. For an A of few rows, for which packing
  // B would be a large part of the work. Null for AMX (never measured there).
  void (*gemm_b_rows)(int64_t m, int64_t n, int64_t k, const uint16_t* a, const uint16_t* b,
                      int64_t ldb, float beta, float* c, int64_t ldc);
  // gemm_packed_a into a bfloat16 C [m, n] (rows ldc apart), each float32 sum rounded as
  // round_rows rounds it: the same bits as gemm_packed_a then round_rows, without the
  // float32 block between. The sums start from partial [m, n] (rows ld_partial apart: a
  // sum's earlier terms, as beta = 1 would read them), or from zero where it is null. Null
  // for AMX (never measured there).
  void (*gemm_packed_round)(int64_t m, int64_t n, int64_t k, const uint16_t* a,
                            const uint16_t* b, int64_t b_panel, const float* partial,
                            int64_t ld_partial, uint16_t* c, int64_t ldc);
  // gemm_b_rows likewise. Null for AMX.
  void (*gemm_b_rows_round)(int64_t m, int64_t n, int64_t k, const uint16_t* a,
                            const uint16_t* b, int64_t ldb, const float* partial,
                            int64_t ld_partial, uint16_t* c, int64_t ldc);
};

// Whether bfloat16 rows [m, k], lda apart, are already kernels' packed A (packed_a_is_rows),
// so that gemm_packed_a reads them where they are.
inline bool bf16_rows_are_packed_a(const GemmBf16Kernels* kernels, int64_t lda, int64_t m,
                                   int64_t k) {
  return kernels->packed_a_is_rows && lda == k && bf16_padded_k(k) == k && m % 16 == 0;
}

// Which bfloat16 kernels run: the best this CPU (and operating system) supports, or the
// one GATEDRNN_CPU_BF16=amx|avx512_bf16|none names (at most that). Decided on the first
// call; throws std::runtime_error on every call when the variable asks for one this
// machine lacks. Only the AVX-512 build (cpu_capability() == avx512) has any.
enum class Bf16Kernel : int { kNone = 0, kAvx512Bf16 = 1, kAmx = 2 };
Bf16Kernel bf16_kernel();
const char* bf16_kernel_name(Bf16Kernel kernel);

// The table of bf16_kernel(); nullptr for kNone.
const GemmBf16Kernels* gemm_bf16_kernels();

#ifdef GATEDRNN_CPU_X86
namespace AVX512 {
// Null where this compiler cannot build them.
const GemmBf16Kernels* gemm_bf16_amx();
const GemmBf16Kernels* gemm_bf16_avx512();
}  // namespace AVX512
#endif

// float -> bfloat16, to nearest with ties to even; NaN stays NaN.
inline uint16_t to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace gatedrnn
