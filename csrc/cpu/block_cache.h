#pragma once
// CPU memory for the ops' results and buffers, from a cache of freed blocks.
//
// An op call allocates a few large blocks (the workspace, the output, the gate buffers,
// the gradients) and frees them within a step or two. Through glibc, those blocks come
// from the top of the heap or from fresh mmaps, and glibc gives them back to the system
// when they are freed (it trims the heap once more than twice its mmap threshold is free
// at the top). Every call then touches fresh pages: at (T, N, H) = (100, 16, 128) a GRU
// training step took ~1,300 page faults and 0.6-2.6 ms of system time, much of it inside
// the time loop where the other threads wait at the barrier. torch.nn's per-step
// allocations are small and never trimmed, and took none.
//
// The cache keeps freed blocks of 32 KiB and more and hands them out again, up to a total
// held size: GATEDRNN_CPU_CACHE_MB, default 256; 0 turns the cache off. Before taking a
// fresh block it releases held ones of at least that size (block_cache.cpp). Like torch's
// CUDA caching allocator, it holds that memory until empty_cpu_cache().
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace gatedrnn {

// at::empty / at::zeros on the CPU, from the cache.
at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options);
at::Tensor cached_zeros(at::IntArrayRef sizes, const at::TensorOptions& options);
// t itself when contiguous, else a contiguous copy from the cache.
at::Tensor cached_contiguous(const at::Tensor& t);

// Bytes of freed blocks the cache holds, and a release of all of them.
int64_t cpu_cache_bytes();
void empty_cpu_cache();

}  // namespace gatedrnn
