#pragma once
// The micro-kernel of our GEMM (cpu/gemm.h), built once per ISA (isa/gemm_tiles.cpp):
// C = A @ B + beta * C with B in panels of `width` columns, each output held in a register
// for its whole sum over k.
#include <cstdint>

#include "../capability.h"

namespace gatedrnn {

template <typename scalar_t>
struct GemmKernels {
  // Columns per panel of B: two vectors of the ISA (32 floats with AVX-512, 16 with AVX2
  // and the portable build).
  int64_t width;
  // c[:m, :n] = a @ b + beta * c[:m, :n] (c not read when beta == 0), where
  //   a(r, kk) = a[r * a_row + kk * a_step]        (a row-major A, or a transposed one)
  //   b(kk, j) = b[(j / width) * b_panel + kk * b_ld + j % width]
  // so a row-major B [k, n] is b_ld = its leading dim, b_panel = width, and a packed one
  // ([panels, k, width]) b_ld = width, b_panel = k * width. Columns of B past n are never
  // read. Each output is one chain of fused multiply-adds over kk = 0, 1, ..., k - 1
  // starting from beta * c (from zero when beta == 0, c itself when beta == 1), so its
  // bits depend neither on m, n, the row or panel it is in, nor on how a caller cuts C
  // into blocks.
  void (*gemm)(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t a_row,
               int64_t a_step, const scalar_t* b, int64_t b_ld, int64_t b_panel, scalar_t beta,
               scalar_t* c, int64_t ldc);
  // gemm in two parts, for an A that several calls read (a weight gradient's dg^T, which
  // the gradients of w_ih and w_hh share, and the column blocks of each): pack_a writes
  // A's rows [0, m) in the layout gemm copies a transposed A into (m * k elements), and
  // gemm_packed_a is gemm on them, with the same bits.
  void (*pack_a)(int64_t m, int64_t k, const scalar_t* a, int64_t a_row, int64_t a_step,
                 scalar_t* dst);
  void (*gemm_packed_a)(int64_t m, int64_t n, int64_t k, const scalar_t* a, const scalar_t* b,
                        int64_t b_ld, int64_t b_panel, scalar_t beta, scalar_t* c, int64_t ldc);
  // B's columns [0, n), row-major (rows b_ld apart), as packed panels ([panels, k, width],
  // columns past n in the last panel not written), for a B that several calls of gemm
  // read: the bits of gemm on B in place.
  void (*pack_b)(int64_t n, int64_t k, const scalar_t* b, int64_t b_ld, scalar_t* dst);
  // The same product stored transposed: c[j * ldc + i] = (a @ b)[i, j] + beta * c[j * ldc
  // + i], for a row-major a [m, k] (leading dim lda) and a packed b ([panels, k, width]).
  // Each output is the chain gemm makes of it, so a weight's rows as a here, against a
  // packed state as b, give bit for bit the products of the state against the packed
  // weight.
  void (*gemm_transposed)(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                          const scalar_t* b, scalar_t beta, scalar_t* c, int64_t ldc);
  // c[:m, :n] = a[:m, :k] @ w[:n, :k]^T + beta * c (c not read when beta == 0), with a's
  // and w's rows contiguous (leading dims lda, ldw): a row of a against rows of w as they
  // are stored, nothing packed, for batches of a few rows. Each output is the same sum in
  // the same order whatever m and n: per vector lane a chain of fused multiply-adds over
  // the lane's k, the lanes then added in a fixed order, then beta * c.
  void (*dot)(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
              const scalar_t* w, int64_t ldw, scalar_t beta, scalar_t* c, int64_t ldc);
  // dot with a bfloat16 w (bits, uint16_t), widened exactly as it is read: the bits dot
  // gives on a float copy of w, reading half the bytes.
  void (*dot_bf16)(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                   const uint16_t* w, int64_t ldw, scalar_t beta, scalar_t* c, int64_t ldc);
  // gemm for a few rows of a (a(r, kk) as for gemm) against a row-major bfloat16 B [k, n]
  // (bits, leading dim b_ld), widened exactly as it is read: the bits gemm gives on a float
  // copy of B, reading half the bytes and copying nothing. B is streamed row after row,
  // 4 rows of a at a time: for a one-step call's few rows, not for many.
  void (*gemm_few_rows_bf16)(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t a_row,
                             int64_t a_step, const uint16_t* b, int64_t b_ld, scalar_t beta,
                             scalar_t* c, int64_t ldc);
  // gemm_few_rows_bf16 into a bfloat16 C (bits, leading dim ldc), each sum rounded as
  // Tensor.to rounds it: the bits of C made in scalar_t and rounded after. The sums start
  // from partial (rows ld_partial apart: a sum's earlier terms, as beta = 1 reads them),
  // or from zero where it is null.
  void (*gemm_few_rows_bf16_round)(int64_t m, int64_t n, int64_t k, const scalar_t* a,
                                   int64_t a_row, int64_t a_step, const uint16_t* b,
                                   int64_t b_ld, const scalar_t* partial, int64_t ld_partial,
                                   uint16_t* c, int64_t ldc);
};

GATEDRNN_CPU_KERNELS(GemmKernels, gemm_kernels)

}  // namespace gatedrnn
