// The CPU block cache (block_cache.h).
#include "block_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>

#include <pthread.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <mutex>

namespace gatedrnn {
namespace {

// Smaller blocks come from glibc's bins, which it does not give back: no page faults.
constexpr size_t kMinBytes = size_t(32) << 10;
// Every larger block is kept when freed, up to the cache's limit. A held block is memory
// only these ops can reuse, so a fresh block is taken only after releasing held ones of at
// least its size (the least recently freed first): what the cache holds then never adds
// to the memory the ops' own allocations need at once, only to what torch's allocations
// find taken. Blocks above 8 MiB used to go back to glibc, because the cache kept them
// beside fresh ones: caching every size raised the benchmark's RNN large-2l-bi training
// peak from 148 to 166 MiB (torch.nn: 147). With the release before a fresh block, the
// benchmark's peaks are those of no cache above 8 MiB or less (RNN large-packed training
// 44.9 -> 39.9 MiB, LSTM large 121.4 -> 115.8, RNN large-2l-bi 156.3 -> 154.3), while the
// large rows stop taking fresh pages on every call: an LSTM large training step took
// ~31,000 page faults and 60 ms of system time, now ~300 and 1 ms (Intel Xeon, 2 threads).
// Each block starts with a header that records its capacity; the data follows, still
// aligned for any vector load.
constexpr size_t kHeader = 64;

// Bytes: the variable `name` read as a whole number of MiB, or default_mib when it is
// unset or empty; a clear error naming it otherwise. `what` is the cache it sizes.
size_t env_mib(const char* name, long long default_mib, const char* what) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return static_cast<size_t>(default_mib) << 20;
  char* end = nullptr;
  errno = 0;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK(errno == 0 && *end == '\0' && mb >= 0 && mb <= (1ll << 30), "gatedrnn: ", name,
              " must be a whole number of MiB (0 turns the ", what, " off), got '", env, "'");
  return static_cast<size_t>(mb) << 20;
}

size_t cache_limit() { return env_mib("GATEDRNN_CPU_CACHE_MB", 256, "CPU block cache"); }

class BlockCache final : public c10::Allocator {
 public:
  static BlockCache& instance() {
    // Never destroyed: tensors freed during static destruction still return here.
    static BlockCache* cache = new BlockCache();
    return *cache;
  }

  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < kMinBytes || limit_ == 0) {
      return c10::GetDefaultCPUAllocator()->allocate(bytes);
    }
    char* base = take(bytes);
    if (base == nullptr) {
      release_least_recent(bytes);
      base = static_cast<char*>(c10::alloc_cpu(kHeader + bytes));
      std::memcpy(base, &bytes, sizeof(bytes));
    }
    return {base + kHeader, base, &BlockCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t held() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(held_);
  }

  void clear() {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (const Free& f : lru_) c10::free_cpu(f.base);
    lru_.clear();
    by_size_.clear();
    held_ = 0;
  }

 private:
  struct Free {
    size_t capacity;
    char* base;
  };
  using Lru = std::list<Free>;  // most recently freed first

  BlockCache() : limit_(cache_limit()) {
    // A fork while another thread holds the mutex (ops release the GIL) would leave the
    // child's copy locked for good: hold it across the fork, as glibc does its arenas'.
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] { instance().mutex_.unlock(); });
  }

  static size_t capacity_of(const char* base) {
    size_t capacity;
    std::memcpy(&capacity, base, sizeof(capacity));
    return capacity;
  }

  // The smallest held block of bytes to 9/8 * bytes, or null. Up to 2 * bytes, a
  // bfloat16 cell's [N, H] output took the block its float32 buffer of the same shape had
  // freed, and kept twice its size alive until the backward: a decoder of two bfloat16
  // LSTMCells, (N, H) = (64, 512), 20 steps, peaked at 55.5 MiB, now 51.6 (GRUCell 41.7
  // -> 39.8; torch.nn's 33.0 and 30.5: our workspace is float32). The time of the
  // benchmark's LSTM large, GRU large and decode rows did not move beyond the noise
  // (AMD EPYC Zen 4, 2 threads, three runs each, alternating).
  char* take(size_t bytes) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = by_size_.lower_bound(bytes);
    if (it == by_size_.end() || it->first - bytes > bytes / 8) return nullptr;
    char* base = it->second->base;
    held_ -= it->first;
    lru_.erase(it->second);
    by_size_.erase(it);
    return base;
  }

  // Frees held blocks, least recently freed first, until at least `bytes` are freed or
  // none is left.
  void release_least_recent(size_t bytes) {
    const std::lock_guard<std::mutex> lock(mutex_);
    size_t freed = 0;
    while (freed < bytes && !lru_.empty()) freed += free_oldest();
  }

  // Frees the least recently freed held block; returns its capacity. Under mutex_.
  size_t free_oldest() {
    const Free old = lru_.back();
    const auto range = by_size_.equal_range(old.capacity);
    for (auto it = range.first; it != range.second; ++it) {
      if (it->second->base == old.base) {
        by_size_.erase(it);
        break;
      }
    }
    held_ -= old.capacity;
    c10::free_cpu(old.base);
    lru_.pop_back();
    return old.capacity;
  }

  static void release(void* context) { instance().put(static_cast<char*>(context)); }

  // Keeps a freed block, evicting the least recently freed ones to stay under the limit.
  void put(char* base) {
    const size_t capacity = capacity_of(base);
    const std::lock_guard<std::mutex> lock(mutex_);
    if (capacity > limit_) {
      c10::free_cpu(base);
      return;
    }
    while (held_ + capacity > limit_) free_oldest();
    lru_.push_front({capacity, base});
    by_size_.emplace(capacity, lru_.begin());
    held_ += capacity;
  }

  const size_t limit_;
  std::mutex mutex_;
  Lru lru_;
  std::multimap<size_t, Lru::iterator> by_size_;
  size_t held_ = 0;
};

}  // namespace

at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  return at::detail::empty_generic(sizes, &BlockCache::instance(),
                                   c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

at::Tensor cached_zeros(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = cached_empty(sizes, options);
  if (t.numel() > 0) std::memset(t.mutable_data_ptr(), 0, t.nbytes());
  return t;
}

at::Tensor cached_contiguous(const at::Tensor& t) {
  if (t.is_contiguous()) return t;
  at::Tensor copy = cached_empty(t.sizes(), t.options());
  copy.copy_(t);
  return copy;
}

int64_t cpu_cache_bytes() { return BlockCache::instance().held(); }

void empty_cpu_cache() { BlockCache::instance().clear(); }

}  // namespace gatedrnn
