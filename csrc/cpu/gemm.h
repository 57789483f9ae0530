#pragma once
// Our GEMM, for every product of the CPU ops: the recurrent GEMM of each step, the input
// projection, and the input and weight gradients. No allocation and no dispatcher call,
// so it can sit in the time loop; the micro-kernel is built once per ISA
// (isa/gemm_tiles.h) and everything here is plain C++.
//
// Each output is one chain of fused multiply-adds over the whole k, in order (no split of
// k), so its bits depend on neither the blocking nor the thread count, and a thread can
// run several blocks as one call. It replaced MKL's sgemm (and its packed form) and dgemm,
// which is fast on Intel only. On the AMD EPYC (Zen 3, AVX2, one core) it was written on:
// the step products (m, n, k) = (64, 1024, 512) and (64, 256, 2048) at 80-84 GFLOP/s
// against MKL's 59-61 (torch.mm, one thread), a weight gradient (2048, 512, 1024) with A
// transposed at 66-70 against 68, an input gradient (1024, 512, 2048) at 64-71 against 77.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "block_cache.h"
#include "isa/gemm_bf16.h"
#include "isa/gemm_tiles.h"

namespace gatedrnn {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The arithmetic of a GEMM's products. kBf16, the ops' bfloat16 form: both operands
// rounded to bfloat16 and the products accumulated in float32, as oneDNN's bfloat16
// kernels (torch.nn's) compute, on the bfloat16 kernels (isa/gemm_bf16.h) where the CPU
// has them (AMX, AVX512_BF16); where it has none, in float32 as kNative, which is exact
// for the bfloat16 values and as fast as this CPU's float32 GEMM. Only float GEMMs have
// the choice.
enum class GemmPrecision : uint8_t { kNative, kBf16 };

inline bool is_bf16(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16; }

// t in the dtype the time loops compute in: float32 for a bfloat16 tensor (a contiguous
// copy from the block cache: through torch's allocator a one-step call's float32 weights
// were fresh pages at every call), else t.
inline at::Tensor widened(const at::Tensor& t) {
  if (!t.defined() || !is_bf16(t)) return t;
  at::Tensor wide = cached_empty(t.sizes(), t.options().dtype(at::kFloat));
  wide.copy_(t);
  return wide;
}

// A fresh contiguous copy of t in the time loops' dtype, for a state the loop writes (the
// backward's gradient of the final state): one copy, where widened(t).clone() made two of
// a bfloat16 t (a tenth of the bfloat16 RNNCell backward's time outside its products).
inline at::Tensor widened_copy(const at::Tensor& t) {
  if (!is_bf16(t)) return t.clone(at::MemoryFormat::Contiguous);
  at::Tensor wide = cached_empty(t.sizes(), t.options().dtype(at::kFloat));
  wide.copy_(t);
  return wide;
}

// The bfloat16 kernels a GEMM of this type and precision runs on, or null.
template <typename scalar_t>
const GemmBf16Kernels* bf16_kernels_for(GemmPrecision precision) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return precision == GemmPrecision::kBf16 ? gemm_bf16_kernels() : nullptr;
  } else {
    return nullptr;
  }
}

// A bfloat16 panel (isa/gemm_bf16.h): elements from column j of a panel on, for k rounded
// up to kp: [kp / 2][kBf16PanelWidth][2].
inline int64_t bf16_panel_elements(int64_t k) { return bf16_padded_k(k) * kBf16PanelWidth; }

// A as the micro-kernel reads it: a(r, kk) = data[r * row + kk * step].
template <typename scalar_t>
struct GemmA {
  const scalar_t* data;
  int64_t row, step;
  // A row-major [m, k] (leading dim ld), or one stored [k, m] and used transposed.
  static GemmA rows(const scalar_t* a, int64_t ld) { return {a, ld, 1}; }
  static GemmA transposed(const scalar_t* a, int64_t ld) { return {a, 1, ld}; }
  GemmA from_row(int64_t i0) const { return {data + i0 * row, row, step}; }
};

// B as the micro-kernel reads it, in panels of `width` columns (the kernel's):
// b(kk, j) = data[(j / width) * panel + kk * ld + j % width]; or, packed for the bfloat16
// kernels, in their panels (bf16 non-null, bf16_panel elements apart).
template <typename scalar_t>
struct GemmB {
  const scalar_t* data;
  int64_t ld, panel, width;
  const uint16_t* bf16 = nullptr;
  int64_t bf16_panel = 0;
  // > 0: bf16 is instead B's bfloat16 rows, this many elements apart, read in place by
  // the bfloat16 kernels' gemm_b_rows.
  int64_t bf16_ld = 0;
  // A row-major B [k, n] (leading dim ld), read in place.
  static GemmB rows(const scalar_t* b, int64_t ld) {
    const int64_t w = gemm_kernels<scalar_t>().width;
    return {b, ld, w, w};
  }
  // Columns from j0 on; j0 must start a panel unless B is read in place.
  GemmB from_column(int64_t j0) const {
    if (bf16 != nullptr && bf16_ld > 0) return {nullptr, 0, 0, 0, bf16 + j0, 0, bf16_ld};
    if (bf16 != nullptr) {
      TORCH_INTERNAL_ASSERT(j0 % kBf16PanelWidth == 0,
                            "gatedrnn: a packed GEMM operand cut inside a panel");
      return {nullptr, 0, 0, 0, bf16 + (j0 / kBf16PanelWidth) * bf16_panel, bf16_panel};
    }
    TORCH_INTERNAL_ASSERT(panel == width || j0 % width == 0,
                          "gatedrnn: a packed GEMM operand cut inside a panel");
    return {data + (j0 / width) * panel + j0 % width, ld, panel, width};
  }
};

// This thread's scratch for an operand tile_gemm packs for the bfloat16 kernels (grown,
// never shrunk): size elements.
inline uint16_t* bf16_scratch(int64_t size) {
  thread_local std::vector<uint16_t> buffer;
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

// C[m, n] = A @ B + beta * C on this thread (C not read when beta == 0), with the
// products of `precision`: B packed for the bfloat16 kernels runs on them, and so do
// B's bfloat16 rows (bf16_ld), A packed first; a float32 B read in place in a kBf16
// GEMM is packed for them first. Packings into this thread's scratch.
template <typename scalar_t>
inline void tile_gemm(int64_t m, int64_t n, int64_t k, const GemmA<scalar_t>& a,
                      const GemmB<scalar_t>& b, scalar_t beta, scalar_t* c, int64_t ldc,
                      GemmPrecision precision = GemmPrecision::kNative) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    const GemmBf16Kernels* bf16 = gemm_bf16_kernels();
    if (b.bf16 != nullptr && b.bf16_ld > 0) {
      uint16_t* packed = bf16_scratch(bf16_packed_a_elements(m, k));
      bf16->pack_a(a.data, a.row, a.step, m, k, packed);
      bf16->gemm_b_rows(m, n, k, packed, b.bf16, b.bf16_ld, beta, c, ldc);
      return;
    }
    if (b.bf16 != nullptr) {
      bf16->gemm(m, n, k, a.data, a.row, a.step, b.bf16, b.bf16_panel, beta, c, ldc);
      return;
    }
    if (precision == GemmPrecision::kBf16 && bf16 != nullptr && k > 0 && m > 0 && n > 0) {
      TORCH_INTERNAL_ASSERT(b.panel == b.width, "gatedrnn: a bfloat16 GEMM of packed float B");
      uint16_t* packed = bf16_scratch(ceil_div(n, kBf16PanelWidth) * bf16_panel_elements(k));
      bf16->pack_b_rows(b.data, b.ld, k, n, packed);
      bf16->gemm(m, n, k, a.data, a.row, a.step, packed, bf16_panel_elements(k), beta, c, ldc);
      return;
    }
  }
  gemm_kernels<scalar_t>().gemm(m, n, k, a.data, a.row, a.step, b.data, b.ld, b.panel, beta, c,
                                ldc);
}

// Rows of a weight W to pack: the j-th packed row is W's row `row(j)`.
struct AllRows {
  int64_t operator()(int64_t j) const { return j; }
};

// One panel of `width` columns of W^T for `cols` rows of W (rows[j] the j-th, its
// elements cs apart): out[kk * width + j] = rows[j][kk * cs], zeros for j >= cols.
//
// Copied in tiles of 16 x 16, each read along the direction in which W is contiguous and
// written along the other, within L1. Before, an element-wise copy through a transposed
// view (at::Tensor::copy_) after an at::cat of the unit block's rows took a third of a
// one-step (T = 1) 2-layer LSTM call at batch 64 and hidden size 512, whose four weights
// were packed at every call: 13-14 ms per call, 8.1-8.5 with this (AMD EPYC Zen 4, 2
// threads, medians of 5 x 100 calls). Still ~3 GB/s: the weights come from L3 or memory,
// and the copy waits on them.
template <typename scalar_t>
void pack_panel(const scalar_t* const* rows, int64_t cols, int64_t cs, int64_t k, int64_t width,
                scalar_t* out) {
  constexpr int64_t kTile = 16;
  for (int64_t j0 = 0; j0 < width; j0 += kTile) {
    const int64_t nj = std::clamp<int64_t>(cols - j0, 0, kTile);
    const scalar_t* const* r = rows + j0;
    for (int64_t k0 = 0; k0 < k; k0 += kTile) {
      const int64_t nk = std::min(kTile, k - k0);
      scalar_t* o = out + k0 * width + j0;
      if (cs == 1) {  // W's rows contiguous: read along k
        for (int64_t j = 0; j < nj; ++j) {
          for (int64_t kk = 0; kk < nk; ++kk) o[kk * width + j] = r[j][k0 + kk];
        }
      } else {  // along the rows (contiguous for W^T stored row-major)
        for (int64_t kk = 0; kk < nk; ++kk) {
          for (int64_t j = 0; j < nj; ++j) o[kk * width + j] = r[j][(k0 + kk) * cs];
        }
      }
      const int64_t pad = std::min(kTile, width - j0) - nj;
      if (pad > 0) {
        for (int64_t kk = 0; kk < nk; ++kk) std::fill_n(o + kk * width + nj, pad, scalar_t(0));
      }
    }
  }
}

// The at::parallel_for grain of a copying pass (packing, rounding) over items of
// `elements` elements each: at least 16 Ki elements per thread. A unit block's weight at
// hidden size 256 (64 Ki elements) packed on one thread took 0.2 ms, on two ~0.09.
inline int64_t copy_grain(int64_t elements) {
  return std::max<int64_t>(1, (int64_t(16) << 10) / std::max<int64_t>(1, elements));
}

// W^T for n rows of a weight W [rows, k] (any strides) in panels of `width` columns:
// [ceil(n / width), k, width], panels[p, kk, j] = W[row(p * width + j), kk], zeros past n,
// each panel's k rows contiguous so that a kernel streams them; the panels spread over
// the threads.
template <typename scalar_t, typename Row = AllRows>
at::Tensor pack_panels(const at::Tensor& w, int64_t n, int64_t width, const Row& row = Row()) {
  constexpr int64_t kMaxWidth = 64;
  TORCH_INTERNAL_ASSERT(width <= kMaxWidth, "gatedrnn: a panel wider than ", kMaxWidth);
  const int64_t k = w.size(1), panels = ceil_div(n, width);
  const int64_t rs = w.stride(0), cs = w.stride(1);
  at::Tensor packed = cached_empty({panels, k, width}, w.options());
  const scalar_t* src = w.template const_data_ptr<scalar_t>();
  scalar_t* dst = packed.template mutable_data_ptr<scalar_t>();
  const int64_t grain = copy_grain(k * width);
  at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    const scalar_t* rows[kMaxWidth];
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t cols = std::min(width, n - p * width);
      for (int64_t j = 0; j < cols; ++j) rows[j] = src + row(p * width + j) * rs;
      pack_panel(rows, cols, cs, k, width, dst + p * k * width);
    }
  });
  return packed;
}

// pack_bf16_weight for a weight of element type T: float, or uint16_t (bfloat16 bits).
template <typename T, typename Row>
at::Tensor pack_bf16_weight_of(const at::Tensor& w, int64_t n, const Row& row) {
  const GemmBf16Kernels* kernels = gemm_bf16_kernels();
  const int64_t k = w.size(1), panels = ceil_div(n, kBf16PanelWidth);
  const int64_t panel = bf16_panel_elements(k), rs = w.stride(0), cs = w.stride(1);
  at::Tensor packed = cached_empty({panels, panel}, w.options().dtype(at::kBFloat16));
  const T* src = reinterpret_cast<const T*>(w.const_data_ptr());
  uint16_t* dst = reinterpret_cast<uint16_t*>(packed.mutable_data_ptr());
  const int64_t grain = copy_grain(panel);
  at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      uint16_t* out = dst + p * panel;
      const int64_t j0 = p * kBf16PanelWidth, cols = std::min(kBf16PanelWidth, n - j0);
      const T* columns[kBf16PanelWidth];
      bool consecutive = true;
      for (int64_t j = 0; j < cols; ++j) {
        columns[j] = src + row(j0 + j) * rs;
        consecutive = consecutive && row(j0 + j) == row(j0) + j;
      }
      constexpr bool kFloat = std::is_same_v<T, float>;
      if (cs == 1) {
        if constexpr (kFloat) {
          kernels->pack_b_columns(columns, k, cols, out);
        } else {
          kernels->pack_b_columns_bf16(columns, k, cols, out);
        }
      } else if (rs == 1 && consecutive) {
        if constexpr (kFloat) {
          kernels->pack_b_rows(columns[0], cs, k, cols, out);
        } else {
          kernels->pack_b_rows_bf16(columns[0], cs, k, cols, out);
        }
      } else {
        std::fill_n(out, panel, uint16_t(0));
        for (int64_t j = 0; j < cols; ++j) {
          for (int64_t kk = 0; kk < k; ++kk) {
            const T x = columns[j][kk * cs];
            uint16_t bits;
            if constexpr (kFloat) {
              bits = to_bf16(x);
            } else {
              bits = x;
            }
            out[(kk / 2) * 2 * kBf16PanelWidth + 2 * j + (kk % 2)] = bits;
          }
        }
      }
    }
  });
  return packed;
}

// W^T for n rows of a weight W [rows, k] (any strides; float32, or bfloat16 taken as it
// is), as the bfloat16 kernels' panels: [ceil(n / 32), bf16_panel_elements(k)] bfloat16,
// row(j) the j-th row taken. W's rows contiguous (a weight), or the rows of a panel one
// after another along W's contiguous columns (a weight's transpose, W^T's consecutive
// columns), are packed by the kernels' vector code; anything else here, element by
// element.
template <typename Row = AllRows>
at::Tensor pack_bf16_weight(const at::Tensor& w, int64_t n, const Row& row = Row()) {
  if (is_bf16(w)) return pack_bf16_weight_of<uint16_t>(w, n, row);
  return pack_bf16_weight_of<float>(w, n, row);
}

// W^T for a weight W [n, k], packed once into the GEMM kernel's panels (pack_panels), or
// into the bfloat16 kernels' (pack_bf16_weight) for a kBf16 GEMM where they run. A
// bfloat16 W (a bfloat16 op's) goes into the bfloat16 panels as it is, or is widened.
template <typename scalar_t>
class PackedWeight {
 public:
  PackedWeight() = default;
  explicit PackedWeight(const at::Tensor& w, GemmPrecision precision = GemmPrecision::kNative)
      : PackedWeight(w, w.size(0), AllRows(), precision) {}
  // The n rows row(0), ..., row(n - 1) of w.
  template <typename Row>
  PackedWeight(const at::Tensor& w, int64_t n, const Row& row,
               GemmPrecision precision = GemmPrecision::kNative)
      : n_(n), k_(w.size(1)) {
    if (bf16_kernels_for<scalar_t>(precision) != nullptr) {
      panels_ = pack_bf16_weight(w, n, row);
    } else {
      panels_ = pack_panels<scalar_t>(widened(w), n, gemm_kernels<scalar_t>().width, row);
    }
  }
  bool defined() const { return panels_.defined(); }
  GemmB<scalar_t> b() const {
    if (panels_.scalar_type() == at::kBFloat16) {  // packed for the bfloat16 kernels
      return {nullptr, 0, 0, 0, reinterpret_cast<const uint16_t*>(panels_.const_data_ptr()),
              bf16_panel_elements(k_)};
    }
    const int64_t width = gemm_kernels<scalar_t>().width;
    return {panels_.template const_data_ptr<scalar_t>(), width, k_ * width, width};
  }
  // C[:m] = A[:m] @ W^T + beta * C[:m] on this thread.
  void run(int64_t m, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
           int64_t ldc) const {
    tile_gemm<scalar_t>(m, n_, k_, GemmA<scalar_t>::rows(a, lda), b(), beta, c, ldc);
  }
  // Whether W is packed for the bfloat16 kernels (then run_packed_a can run).
  bool bf16() const { return panels_.defined() && panels_.scalar_type() == at::kBFloat16; }
  // run with A already packed by the bfloat16 kernels' pack_a: the same bits.
  void run_packed_a(int64_t m, const uint16_t* a, scalar_t beta, scalar_t* c,
                    int64_t ldc) const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      const GemmB<scalar_t> w = b();
      gemm_bf16_kernels()->gemm_packed_a(m, n_, k_, a, w.bf16, w.bf16_panel, beta, c, ldc);
    } else {
      TORCH_INTERNAL_ASSERT(false, "gatedrnn: a bfloat16 GEMM of a non-float C");
    }
  }

 private:
  int64_t n_ = 0, k_ = 0;
  at::Tensor panels_;
};

// How a GEMM's C is cut into blocks for threads: a function of the shape alone, never of
// the thread count (though with one chain per output the bits would not change anyway).
struct GemmBlocks {
  int64_t m = 0, n = 0;    // C is [m, n]
  int64_t mb = 0, nb = 0;  // block height and width
  int64_t rows() const { return mb > 0 ? ceil_div(m, mb) : 0; }
  int64_t cols() const { return nb > 0 ? ceil_div(n, nb) : 0; }
  int64_t count() const { return rows() * cols(); }
  // Block `id` (row-major over the grid of blocks): C[i0 : i0+mi, j0 : j0+ni].
  struct Block {
    int64_t i0, mi, j0, ni;
  };
  Block block(int64_t id) const {
    const int64_t i0 = (id / cols()) * mb, j0 = (id % cols()) * nb;
    return {i0, std::min(mb, m - i0), j0, std::min(nb, n - j0)};
  }
};

// Blocks of at least ~2^21 multiply-adds (about 30 us on one core), at most 8 of them:
// on the 2-core benchmark machine fewer, larger blocks beat 64 small ones (each parallel
// region costs a fork/join, each block rereads its share of A and B); 8 keeps up to 8
// threads busy. Halving stops at 128 rows and 256 columns. Widths are multiples of 64
// columns, so that a block starts a panel of every kernel (16 to 32 columns).
// An output counts as at least kMinK multiply-adds (gemm_work): writing it costs that
// much when k is small, as in a one-step call's weight gradients (k = the batch), which
// as single blocks left the other thread idle. So does an element of B, read once per
// block: with few rows (a one-step call's input gradient at batch 1, [1, 3H] x [3H, I])
// reading B is the work, which as one block of little "work" ran last, on one thread,
// while the other waited: GRU backward op, (T, N, H) = (1, 1, 512), 2 threads, 414 ->
// 375 us; (1, 1, 256) 100 -> 83.
constexpr int64_t kMinK = 32;
inline double gemm_work(int64_t m, int64_t n, int64_t k) {
  return double(n) * (double(m) * double(std::max(k, kMinK)) + double(kMinK) * double(k));
}
inline GemmBlocks gemm_blocks(int64_t m, int64_t n, int64_t k) {
  constexpr int64_t kBlockWork = int64_t(1) << 21, kMaxBlocks = 8;
  constexpr int64_t kMinRows = 128, kMinCols = 256;
  GemmBlocks g{m, n, m, n};
  const int64_t wanted = std::min<int64_t>(
      kMaxBlocks, std::max<int64_t>(1, static_cast<int64_t>(gemm_work(m, n, k) / kBlockWork)));
  while (g.count() < wanted) {
    const bool can_n = g.nb >= 2 * kMinCols, can_m = g.mb >= 2 * kMinRows;
    if (can_n && (g.nb >= 2 * g.mb || !can_m)) {
      g.nb = ceil_div(ceil_div(g.nb, 2), 64) * 64;
    } else if (can_m) {
      g.mb = ceil_div(ceil_div(g.mb, 2), 16) * 16;
    } else {
      break;
    }
  }
  return g;
}

// C[m, n] = A @ B + beta * C, its blocks (gemm_blocks) spread over threads.
template <typename scalar_t>
void parallel_gemm(int64_t m, int64_t n, int64_t k, const GemmA<scalar_t>& a,
                   const GemmB<scalar_t>& b, scalar_t beta, scalar_t* c, int64_t ldc,
                   GemmPrecision precision = GemmPrecision::kNative) {
  if (m == 0 || n == 0) return;
  const GemmBlocks g = gemm_blocks(m, n, k);
  at::parallel_for(0, g.count(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t id = begin; id < end; ++id) {
      const GemmBlocks::Block bl = g.block(id);
      tile_gemm<scalar_t>(bl.mi, bl.ni, k, a.from_row(bl.i0), b.from_column(bl.j0), beta,
                          c + bl.i0 * ldc + bl.j0, ldc, precision);
    }
  });
}

}  // namespace gatedrnn
