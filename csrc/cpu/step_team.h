#pragma once
// A team of threads that runs a whole time loop inside one parallel region.
//
// A time loop has a GEMM and a pointwise pass per step, each a few microseconds at
// small sizes. Opening a parallel region per step (at::parallel_for) costs a fork/join
// and leaves the other threads spinning while one thread does the serial parts; the
// team instead keeps every thread inside one region for all the steps. Each thread
// owns fixed blocks of hidden units (their recurrent-weight rows stay in its cache),
// does the GEMM and pointwise work of its blocks, and meets the others at a barrier
// when a step's result is complete.
//
// The blocks are a function of the shape alone (unit_blocks), and every block is
// computed by the same code whichever thread runs it, so results are bitwise the same
// for any number of threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gemm.h"
#include "../common/sequence.h"

namespace gatedrnn {

// Hidden units [0, units) cut into count() blocks of `size` (the last may be shorter).
struct UnitBlocks {
  int64_t units = 0, size = 0;
  int64_t count() const { return size > 0 ? ceil_div(units, size) : 0; }
  int64_t begin(int64_t b) const { return b * size; }
  int64_t length(int64_t b) const { return std::min(size, units - b * size); }
};

// Blocks of the units of a recurrent GEMM whose output has `cols_per_unit` columns per
// unit (the gates), with inner dimension k, for batches of up to `rows`, in a call of
// `steps` steps.
// A power-of-two count (1 to 8) balances on 2, 4 and 8 threads. A block gets at least
// kMinCols output columns (MKL's single-threaded kernel slows down on narrow blocks)
// and at least kMinWork multiply-adds per step (below that a barrier costs more than
// the thread it frees), or kMinCallWork in a call of up to kFewSteps steps: there a step
// waits on its weights from L3 or memory (a call's weights are evicted by the next
// layer's and the rest of the model's), and a thread's share of a weight stays in its
// own L2 from one call to the next. Sizes are multiples of 8 units, one AVX2 vector of
// floats.
inline UnitBlocks unit_blocks(int64_t units, int64_t cols_per_unit, int64_t k, int64_t rows,
                              int64_t steps) {
  constexpr int64_t kMaxBlocks = 8, kFewSteps = 8;
  const int64_t kMinWork = steps <= kFewSteps ? int64_t(1) << 14 : int64_t(1) << 17;
  // 256 columns where that still leaves two blocks and steps have 64 rows or more (MKL's
  // single-threaded kernel loses a third of its speed at 128 columns there), else 128.
  const int64_t kMinCols = rows >= 64 && units * cols_per_unit >= 512 ? 256 : 128;
  // In double: the product of four 32-bit extents can pass 2^63.
  const double work = double(units) * double(cols_per_unit) * double(std::max<int64_t>(k, 1)) *
                      double(std::max<int64_t>(rows, 1));
  const int64_t by_cols = units * cols_per_unit / kMinCols;
  const int64_t by_work = static_cast<int64_t>(std::min(work / kMinWork, 1e9));
  int64_t count = 1;
  while (2 * count <= std::min({kMaxBlocks, by_cols, by_work})) count *= 2;
  return UnitBlocks{units, ceil_div(ceil_div(std::max<int64_t>(units, 1), count), 8) * 8};
}

// One thread's view of the team.
class TeamMember {
 public:
  TeamMember(int64_t id, int64_t size) : id_(id), size_(size) {}
  int64_t id() const { return id_; }
  // This thread's share [first, last) of `count` blocks: contiguous, fixed per thread.
  std::pair<int64_t, int64_t> share(int64_t count) const {
    return {count * id_ / size_, count * (id_ + 1) / size_};
  }
  // Waits until every thread of the team has reached it; what each wrote before is then
  // visible to all.
  void barrier() const {
#ifdef _OPENMP
    if (size_ > 1) {
#pragma omp barrier
    }
#endif
  }

 private:
  int64_t id_, size_;
};

// Runs body(const TeamMember&) on min(max_threads, at::get_num_threads()) threads. Every thread must reach the same barriers; the body must
// not throw (an exception cannot leave a parallel region), so all argument checks are
// made before.
template <typename Body>
void run_team(int64_t max_threads, const Body& body) {
  int64_t threads = std::min<int64_t>(max_threads, at::get_num_threads());
  if (at::in_parallel_region()) threads = 1;
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(static_cast<int>(threads))
    body(TeamMember(omp_get_thread_num(), omp_get_num_threads()));
    return;
  }
#endif
  body(TeamMember(0, 1));
}

// The rows [begin, end) of the steps of one chunk; first_step is the chunk's first step
// in processing order.
struct RowRange {
  int64_t first_step, begin, end;
  int64_t rows() const { return end - begin; }
};

// Consecutive steps grouped so that a chunk's input projection, [rows, gate_cols], has
// about 2^16 elements (256 KiB in float32) but at least 128 rows (fewer make the GEMM
// that computes it inefficient), or one step if a step alone has more: computed a chunk
// ahead of the steps that read it, it is still in cache when they do. A function of the
// shape alone.
class StepChunks {
 public:
  // whole: one chunk of every step.
  StepChunks(const Schedule& s, int64_t gate_cols, bool whole) : s_(s) {
    constexpr int64_t kChunkElements = int64_t(1) << 16, kMinRows = 128;
    const int64_t batch = std::max<int64_t>(1, s.batch);
    steps_ = std::max({int64_t(1), kChunkElements / (batch * std::max<int64_t>(1, gate_cols)),
                       (kMinRows + batch - 1) / batch});
    if (whole) steps_ = std::max<int64_t>(1, s.steps());
    for (int64_t k = 0; k < s.steps(); k += steps_) {
      max_rows_ = std::max(max_rows_, rows_of(k).rows());
    }
  }
  int64_t max_rows() const { return max_rows_; }
  int64_t count() const { return ceil_div(s_.steps(), steps_); }
  // The chunk that step k belongs to.
  RowRange rows_of(int64_t k) const {
    const int64_t k0 = k - k % steps_, k1 = std::min(k0 + steps_, s_.steps()) - 1;
    const int64_t t0 = std::min(s_.time_at(k0), s_.time_at(k1));
    const int64_t t1 = std::max(s_.time_at(k0), s_.time_at(k1));
    return {k0, s_.offsets[t0], s_.offsets[t1] + s_.sizes[t1]};
  }

 private:
  const Schedule& s_;
  int64_t steps_ = 1, max_rows_ = 0;
};

// dst[r, j0:j0+len] = src[r, j0:j0+len] for rows [r0, r1) of two [*, ld] matrices: a
// block's columns of the rows a step leaves as they were.
template <typename scalar_t>
void copy_columns(const scalar_t* src, scalar_t* dst, int64_t r0, int64_t r1, int64_t ld,
                  int64_t j0, int64_t len) {
  for (int64_t r = r0; r < r1; ++r) {
    std::copy(src + r * ld + j0, src + r * ld + j0 + len, dst + r * ld + j0);
  }
}

}  // namespace gatedrnn
