#pragma once
// Torch-free interface of the persistent forward kernels (CUDA), for small
// batches where the per-step launches (GEMM + pointwise) dominate.
//
// One cooperative launch runs the whole sequence. Block k owns the hidden units
// [k*U, k*U + U): it keeps their G gate rows of w_hh ([G*U, H]) in shared
// memory for all timesteps, keeps the LSTM cell state of those units in shared
// memory, and at every step
//   1. loads h_prev [n, H] (the previous step's output rows, or h0) into shared memory,
//   2. computes its slice of h_prev @ w_hh^T (one warp per weight row, all rows
//      of the batch at once),
//   3. applies the cell's pointwise update for its units and writes the output,
//      the workspace (the same cache the per-step path writes, so the backward
//      op works unchanged) and, for rows whose sequence ends, h_n (and c_n),
//   4. grid.sync(), after which every block sees the whole new h.
// The input projection x @ w_ih^T is still the hoisted GEMM, done by the caller.
//
// Size limit (checked by *_persistent_plan):
//   batch N <= kPersistentMaxBatch, no LSTM projection (w_hr), and per block
//     U*G*H*sizeof(T)          (weights)
//   + N*H*sizeof(acc_t<T>)     (h_prev)
//   + N*G*U*sizeof(acc_t<T>)   (gate pre-activations)
//   + N*U*sizeof(acc_t<T>)     (LSTM cell state)
//   <= the opt-in shared memory per block (227 KiB on H100/H200, 163 KiB on A100),
//   with U = ceil(H / #SMs), one block per SM. In total the recurrent weights,
//   G*H*H*sizeof(T), must fit in the shared memory of the whole GPU. Largest H
//   that fits (N = 1 / N = 16):
//                    H100/H200 (132 SMs, 227 KiB)    A100 (108 SMs, 163 KiB)
//     LSTM fp32      1320 / 1103                     1016 / 856
//     LSTM fp16/bf16 1872 / 1452                     1436 / 1080
//     GRU  fp32      1569 / 1252                     1188 / 960
//     RNN  fp32      2640 / 1866                     2052 / 1404
//   (float64 is about 0.7x the fp32 sizes.)
#include "common.h"

namespace gatedrnn {
namespace kernels {

constexpr int64_t kPersistentMaxBatch = 16;

struct PersistentPlan {
  bool ok = false;
  const char* reason = "";  // why not, when !ok
  int grid = 0;             // blocks (one per SM at most)
  int threads = 0;          // threads per block
  int units = 0;            // U: hidden units per block
  int max_batch = 0;        // compile-time batch bound of the kernel chosen
  size_t smem = 0;          // dynamic shared memory per block, bytes
};

template <typename T>
struct PersistentParams {
  int64_t steps = 0;                 // T
  int64_t batch = 0;                 // N
  int64_t hidden = 0;                // H (= state size: no projection)
  // Schedule on the device: live rows and first row of each time index t.
  // Both null for padded input (every step has N rows, time t starts at row t*N).
  const int64_t* sizes = nullptr;    // [T]
  const int64_t* offsets = nullptr;  // [T]
  bool reverse = false;
  bool relu = false;                 // RNN only
  const T* w_hh = nullptr;           // [G*H, H]
  const T* b_ih = nullptr;           // [G*H] or null
  const T* b_hh = nullptr;           // [G*H] or null
  const T* h0 = nullptr;             // [N, H]
  const T* c0 = nullptr;             // [N, H] LSTM only
  // x @ w_ih^T, [R, x_ld] (first G*H columns of each row), in acc_t<T> (fp32
  // for the half types). For float/double it may alias the workspace (LSTM,
  // GRU) or the output (RNN): each element is read before it is overwritten,
  // by the thread that overwrites it.
  const acc_t<T>* x_gates = nullptr;
  int64_t x_ld = 0;
  // LSTM [R, 5H] / GRU [R, 4H]: out: the same cache as the per-step kernels;
  // null when no backward will read it. RNN: null.
  T* workspace = nullptr;
  T* output = nullptr;               // [R, H] out: h
  T* h_n = nullptr;                  // [N, H]
  T* c_n = nullptr;                  // [N, H] LSTM only
};

// Whether the persistent kernel of cell C can run this size on the current device, and
// its launch configuration: computed once per device, batch and hidden size, then
// kept for the process (thread-safe). Returns an error only for a failing CUDA
// call; "does not fit" is plan->ok == false with plan->reason.
template <Cell C, typename T>
cudaError_t persistent_plan(int64_t batch, int64_t hidden, PersistentPlan* plan);

// Runs the whole sequence with a plan from persistent_plan<C, T> (same batch and
// hidden size, same device). steps >= 1, batch >= 1. The launch can still be refused
// (cudaErrorCooperativeLaunchTooLarge) when other work holds SMs at that moment; the
// caller then runs the per-step path.
template <Cell C, typename T>
cudaError_t persistent_forward(const PersistentParams<T>& p, const PersistentPlan& plan,
                               cudaStream_t stream);

}  // namespace kernels
}  // namespace gatedrnn
