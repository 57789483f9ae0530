#pragma once
// The persistent forward kernel shared by LSTM, GRU and RNN (see persistent.h
// for the algorithm and the size limit). Included by persistent.cu, which
// instantiates it for every cell and type.
#include <cooperative_groups.h>

#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "device.cuh"
#include "persistent.h"

namespace gatedrnn {
namespace kernels {
namespace persistent_detail {

using namespace dev;

template <Cell C>
struct Gates;
template <>
struct Gates<Cell::kLstm> {
  static constexpr int value = 4;
};
template <>
struct Gates<Cell::kGru> {
  static constexpr int value = 3;
};
template <>
struct Gates<Cell::kRnn> {
  static constexpr int value = 1;
};

constexpr int kThreads = 256;
constexpr int kSmallBatch = 4;  // the two compile-time batch bounds: 4 and kPersistentMaxBatch
constexpr int kLargeBatch = static_cast<int>(kPersistentMaxBatch);

// Dynamic shared memory of one block, byte offsets of each region.
struct Layout {
  size_t w = 0, h = 0, pre = 0, c = 0, total = 0;
};

__host__ __device__ inline size_t align16(size_t v) { return (v + 15) / 16 * 16; }

__host__ __device__ inline Layout make_layout(int gates, int64_t units, int64_t hidden,
                                              int64_t batch, size_t elem, size_t acc,
                                              bool cell_state) {
  Layout l;
  size_t o = 0;
  l.w = o;    // [G*U, H] elem: this block's gate rows of w_hh
  o = align16(o + size_t(gates) * size_t(units) * size_t(hidden) * elem);
  l.h = o;    // [N, H] acc: h_prev
  o = align16(o + size_t(batch) * size_t(hidden) * acc);
  l.pre = o;  // [N, G*U] acc: h_prev @ w_hh^T for this block's rows
  o = align16(o + size_t(batch) * size_t(gates) * size_t(units) * acc);
  l.c = o;    // [N, U] acc: LSTM cell state of this block's units
  o = align16(o + (cell_state ? size_t(batch) * size_t(units) * acc : 0));
  l.total = o;
  return l;
}

template <typename M>
__device__ __forceinline__ M warp_sum(M v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Loads another block's output of the previous step: cache-global (bypasses
// the non-coherent L1), ordered after grid.sync().
template <typename T>
__device__ __forceinline__ T load_cg(const T* p) {
  return __ldcg(p);
}

template <Cell C, typename T, int MAXB>
__global__ void __launch_bounds__(kThreads, 1)
    persistent_forward_kernel(PersistentParams<T> p, int units) {
  using M = acc_t<T>;
  constexpr int G = Gates<C>::value;
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const int64_t H = p.hidden, N = p.batch;
  const Layout L = make_layout(G, units, H, N, sizeof(T), sizeof(M), C == Cell::kLstm);
  T* w_s = reinterpret_cast<T*>(smem_raw + L.w);
  M* h_s = reinterpret_cast<M*>(smem_raw + L.h);
  M* pre_s = reinterpret_cast<M*>(smem_raw + L.pre);

  const int64_t u0 = int64_t(blockIdx.x) * units;
  const int ub = static_cast<int>(H - u0 < units ? H - u0 : units);  // >= 1 by the plan
  const int wrows = G * ub;
  const int pre_ld = G * units;

  // Weights: local row g*ub + u is w_hh row g*H + u0 + u.
  for (int64_t idx = threadIdx.x; idx < int64_t(wrows) * H; idx += blockDim.x) {
    const int64_t r = idx / H, k = idx - r * H;
    const int64_t g = r / ub, u = r - g * ub;
    w_s[idx] = p.w_hh[(g * H + u0 + u) * H + k];
  }
  if constexpr (C == Cell::kLstm) {
    M* c_s = reinterpret_cast<M*>(smem_raw + L.c);
    for (int64_t idx = threadIdx.x; idx < N * ub; idx += blockDim.x) {
      const int64_t b = idx / ub, u = idx - b * ub;
      c_s[idx] = to_acc(p.c0[b * H + u0 + u]);
    }
  }
  // Everything above is read only after the __syncthreads() of the first step.

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  int64_t n_prev = 0, off_prev = 0;
  for (int64_t k = 0; k < p.steps; ++k) {
    const int64_t t = p.reverse ? p.steps - 1 - k : k;
    const int64_t n = p.sizes ? p.sizes[t] : N;
    const int64_t off = p.offsets ? p.offsets[t] : t * N;
    int64_t n_next = 0;  // live rows of the next step; rows >= n_next end here
    if (k + 1 < p.steps) {
      const int64_t tn = p.reverse ? t - 1 : t + 1;
      n_next = p.sizes ? p.sizes[tn] : N;
    }

    // 1. h_prev: the sequence's previous output row, or h0 for rows that start here.
    for (int64_t idx = threadIdx.x; idx < n * H; idx += blockDim.x) {
      const int64_t b = idx / H;
      h_s[idx] = b < n_prev ? to_acc(load_cg(p.output + (off_prev + b) * H + (idx - b * H)))
                            : to_acc(p.h0[idx]);
    }
    __syncthreads();

    // 2. pre[b, r] = h_prev[b] . w_s[r]: one warp per weight row, all batch rows at once.
    for (int r = warp; r < wrows; r += nwarps) {
      M acc[MAXB];
#pragma unroll
      for (int b = 0; b < MAXB; ++b) acc[b] = M(0);
      const T* wr = w_s + int64_t(r) * H;
      for (int64_t kk = lane; kk < H; kk += 32) {
        const M w = to_acc(wr[kk]);
#pragma unroll
        for (int b = 0; b < MAXB; ++b) {
          if (b < n) acc[b] += w * h_s[b * H + kk];
        }
      }
#pragma unroll
      for (int b = 0; b < MAXB; ++b) {
        if (b < n) {  // uniform across the warp
          const M v = warp_sum(acc[b]);
          if (lane == 0) pre_s[b * pre_ld + r] = v;
        }
      }
    }
    __syncthreads();

    // 3. pointwise update of this block's units.
    for (int64_t idx = threadIdx.x; idx < n * ub; idx += blockDim.x) {
      const int64_t b = idx / ub;
      const int u = static_cast<int>(idx - b * ub);
      const int64_t j = u0 + u, row = off + b;
      const M* pre = pre_s + b * pre_ld;  // gate g of unit u at pre[g * ub + u]
      const bool last = b >= n_next;      // the sequence of row b ends at this step
      if constexpr (C == Cell::kLstm) {
        M* c_s = reinterpret_cast<M*>(smem_raw + L.c);
        T* ws = p.workspace ? p.workspace + row * 5 * H : nullptr;
        const M* xg = p.x_gates + row * p.x_ld;
        M pg[4];
#pragma unroll
        for (int g = 0; g < 4; ++g) {
          const int64_t o = g * H + j;
          pg[g] = pre[g * ub + u] + xg[o] + load_or_zero(p.b_ih, o) + load_or_zero(p.b_hh, o);
        }
        const M i = sigmoid_(pg[0]), f = sigmoid_(pg[1]), gg = tanh_(pg[2]),
                o = sigmoid_(pg[3]);
        const M c = f * c_s[b * ub + u] + i * gg;
        const M h = o * tanh_(c);
        c_s[b * ub + u] = c;
        const T cv = from_acc<T>(c);
        if (ws) {
          ws[j] = from_acc<T>(i);
          ws[H + j] = from_acc<T>(f);
          ws[2 * H + j] = from_acc<T>(gg);
          ws[3 * H + j] = from_acc<T>(o);
          ws[4 * H + j] = cv;
        }
        const T hv = from_acc<T>(h);
        p.output[row * H + j] = hv;
        if (last) {
          p.h_n[b * H + j] = hv;
          p.c_n[b * H + j] = cv;
        }
      } else if constexpr (C == Cell::kGru) {
        T* ws = p.workspace ? p.workspace + row * 4 * H : nullptr;
        const M* xg = p.x_gates + row * p.x_ld;
        const M r = sigmoid_(xg[j] + load_or_zero(p.b_ih, j) + pre[u] + load_or_zero(p.b_hh, j));
        const M z = sigmoid_(xg[H + j] + load_or_zero(p.b_ih, H + j) + pre[ub + u] +
                             load_or_zero(p.b_hh, H + j));
        const M hn = pre[2 * ub + u] + load_or_zero(p.b_hh, 2 * H + j);
        const M nn = tanh_(xg[2 * H + j] + load_or_zero(p.b_ih, 2 * H + j) + r * hn);
        const M h = nn + z * (h_s[b * H + j] - nn);
        if (ws) {
          ws[j] = from_acc<T>(r);
          ws[H + j] = from_acc<T>(z);
          ws[2 * H + j] = from_acc<T>(nn);
          ws[3 * H + j] = from_acc<T>(hn);
        }
        const T hv = from_acc<T>(h);
        p.output[row * H + j] = hv;
        if (last) p.h_n[b * H + j] = hv;
      } else {
        const int64_t e = row * H + j;
        const M pr = p.x_gates[row * p.x_ld + j] + pre[u] + load_or_zero(p.b_ih, j) +
                     load_or_zero(p.b_hh, j);
        const M h = p.relu ? (pr < M(0) ? M(0) : pr) : tanh_(pr);
        const T hv = from_acc<T>(h);
        p.output[e] = hv;
        if (last) p.h_n[b * H + j] = hv;
      }
    }

    // 4. every block's new h (and its reads of h_s/pre_s) before the next step.
    grid.sync();
    n_prev = n;
    off_prev = off;
  }
}

template <Cell C, typename T>
const void* kernel_for(int max_batch) {
  if (max_batch == kSmallBatch)
    return reinterpret_cast<const void*>(&persistent_forward_kernel<C, T, kSmallBatch>);
  return reinterpret_cast<const void*>(&persistent_forward_kernel<C, T, kLargeBatch>);
}

// Plans and the shared-memory attribute, kept for the process.
//
// cudaFuncAttributeMaxDynamicSharedMemorySize belongs to a kernel on a device, shared by
// every host thread: set on every call to that call's size, as it once was, a thread
// about to launch a large plan could find it lowered by another thread's smaller one,
// and its launch refused. So it only grows, under a lock, to the largest size any plan
// on that device has needed; a launch with less is unaffected. The plans themselves
// (device attributes, the occupancy query) depend only on the device, the cell, the
// type, the batch and the hidden size, so each is computed once.
inline std::mutex& cache_lock() {
  static std::mutex lock;
  return lock;
}

// Raises the kernel's dynamic shared-memory limit on the current device to at least
// `bytes`. Call with cache_lock() held.
inline cudaError_t raise_smem_limit(const void* kernel, int device, size_t bytes) {
  static std::map<std::pair<const void*, int>, size_t> limits;
  size_t& limit = limits[{kernel, device}];
  if (limit >= bytes) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess) limit = bytes;
  return err;
}

template <Cell C, typename T>
cudaError_t make_plan(int device, int64_t batch, int64_t hidden, PersistentPlan* plan) {
  constexpr int G = Gates<C>::value;
  int sms = 0, smem_optin = 0, coop = 0;
  cudaError_t err;
  if ((err = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device)) != cudaSuccess)
    return err;
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) !=
      cudaSuccess)
    return err;
  if ((err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                    device)) != cudaSuccess)
    return err;
  if (!coop) {
    plan->reason = "the device does not support cooperative launches";
    return cudaSuccess;
  }
  const int64_t units = (hidden + sms - 1) / sms;
  const int64_t grid = (hidden + units - 1) / units;
  const Layout L = make_layout(G, units, hidden, batch, sizeof(T), sizeof(acc_t<T>),
                               C == Cell::kLstm);
  if (L.total > size_t(smem_optin)) {
    plan->reason = "the recurrent weights do not fit in the shared memory of the GPU";
    return cudaSuccess;
  }
  const int max_batch = batch <= kSmallBatch ? kSmallBatch : kLargeBatch;
  const void* kernel = kernel_for<C, T>(max_batch);
  // The occupancy query needs the limit at least at the plan's size.
  if ((err = raise_smem_limit(kernel, device, L.total)) != cudaSuccess) return err;
  int per_sm = 0;
  if ((err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                           L.total)) != cudaSuccess)
    return err;
  if (int64_t(per_sm) * sms < grid) {
    plan->reason = "the kernel's blocks cannot all be resident at once";
    return cudaSuccess;
  }
  plan->ok = true;
  plan->grid = static_cast<int>(grid);
  plan->threads = kThreads;
  plan->units = static_cast<int>(units);
  plan->max_batch = max_batch;
  plan->smem = L.total;
  return cudaSuccess;
}

template <Cell C, typename T>
cudaError_t plan_impl(int64_t batch, int64_t hidden, PersistentPlan* plan) {
  *plan = PersistentPlan{};
  if (batch < 1 || hidden < 1) {
    plan->reason = "empty batch or hidden size";
    return cudaSuccess;
  }
  if (batch > kPersistentMaxBatch) {
    plan->reason = "batch larger than kPersistentMaxBatch (16)";
    return cudaSuccess;
  }
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  // One map per cell and type (this function's instantiation): (device, batch, hidden).
  static std::map<std::tuple<int, int64_t, int64_t>, PersistentPlan> plans;
  const std::lock_guard<std::mutex> guard(cache_lock());
  const auto key = std::make_tuple(device, batch, hidden);
  const auto found = plans.find(key);
  if (found != plans.end()) {
    *plan = found->second;
    return cudaSuccess;
  }
  if ((err = make_plan<C, T>(device, batch, hidden, plan)) != cudaSuccess) {
    *plan = PersistentPlan{};
    return err;  // not kept: a failing query is reported at every call
  }
  plans.emplace(key, *plan);
  return cudaSuccess;
}

template <Cell C, typename T>
cudaError_t forward_impl(const PersistentParams<T>& p, const PersistentPlan& plan,
                         cudaStream_t stream) {
  if (!plan.ok || p.batch > plan.max_batch) return cudaErrorInvalidValue;
  if (p.steps <= 0 || p.batch <= 0 || p.hidden <= 0) return cudaSuccess;
  if (int64_t(plan.units) * plan.grid < p.hidden ||
      int64_t(plan.units) * (plan.grid - 1) >= p.hidden)
    return cudaErrorInvalidValue;  // the plan was made for another hidden size
  const void* kernel = kernel_for<C, T>(plan.max_batch);
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  {
    // A no-op unless the plan was made while another device was current.
    const std::lock_guard<std::mutex> guard(cache_lock());
    if ((err = raise_smem_limit(kernel, device, plan.smem)) != cudaSuccess) return err;
  }
  PersistentParams<T> params = p;
  int units = plan.units;
  void* args[] = {&params, &units};
  return cudaLaunchCooperativeKernel(kernel, dim3(plan.grid), dim3(plan.threads), args,
                                     plan.smem, stream);
}

}  // namespace persistent_detail
}  // namespace kernels
}  // namespace gatedrnn
