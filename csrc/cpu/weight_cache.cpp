// The cache of packed weights (weight_cache.h).
#include "weight_cache.h"

#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdlib>
#include <iterator>
#include <list>
#include <map>
#include <mutex>
#include <tuple>

#include "env_mib.h"

namespace gatedrnn {
namespace {

size_t weight_cache_limit() {
  return env_mib("GATEDRNN_WEIGHT_CACHE_MB", 256, "weight cache");
}

// What identifies a weight's contents, with the packing's parameters.
using Key = std::tuple<const void*, std::vector<int64_t>, std::vector<int64_t>, int,
                       std::vector<int64_t>>;

struct Entry {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  int64_t version;
  std::shared_ptr<const void> packing;
  int64_t bytes;
  std::list<Key>::iterator lru;  // position in the use order, most recent first
};

class WeightCache {
 public:
  static WeightCache& instance() {
    // Never destroyed: ops may still run during static destruction.
    static WeightCache* cache = new WeightCache();
    return *cache;
  }

  std::shared_ptr<const void> get(const at::Tensor& w, std::vector<int64_t> params,
                                  const std::function<Packing()>& make) {
    // Inference tensors have no version counter: a change could not be seen.
    if (limit_ == 0 || w.is_inference() || !w.has_storage()) return make().first;
    const int64_t version = w.unsafeGetTensorImpl()->version_counter().current_version();
    Key key{w.const_data_ptr(), w.sizes().vec(), w.strides().vec(),
            static_cast<int>(w.scalar_type()), std::move(params)};
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      auto it = entries_.find(key);
      if (it != entries_.end()) {
        Entry& e = it->second;
        const c10::intrusive_ptr<c10::StorageImpl> alive = e.storage.lock();
        if (alive && alive.get() == w.storage().unsafeGetStorageImpl() && e.version == version) {
          lru_.splice(lru_.begin(), lru_, e.lru);
          return e.packing;
        }
        erase(it);
      }
    }
    // Built outside the lock: packing a large weight takes a while.
    Packing made = make();
    if (made.second > static_cast<int64_t>(limit_)) return made.first;
    const std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(key);
    if (it != entries_.end()) erase(it);  // another thread packed it meanwhile
    sweep();
    lru_.push_front(key);
    entries_.emplace(std::move(key),
                     Entry{w.storage().getWeakStorageImpl(),
                           version, made.first, made.second, lru_.begin()});
    held_ += made.second;
    // Least recently used first; entries whose weight is gone go whenever they are reached.
    while (held_ > static_cast<int64_t>(limit_) && !lru_.empty()) {
      erase(entries_.find(lru_.back()));
    }
    return made.first;
  }

  int64_t held() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return held_;
  }

  void clear() {
    const std::lock_guard<std::mutex> lock(mutex_);
    entries_.clear();
    lru_.clear();
    held_ = 0;
  }

 private:
  WeightCache() : limit_(weight_cache_limit()) {}

  // Drops the entries whose weight is gone (a model deleted), so they do not hold their
  // memory until the limit pushes them out.
  void sweep() {
    for (auto it = entries_.begin(); it != entries_.end();) {
      auto next = std::next(it);
      if (it->second.storage.expired()) erase(it);
      it = next;
    }
  }

  void erase(std::map<Key, Entry>::iterator it) {
    held_ -= it->second.bytes;
    lru_.erase(it->second.lru);
    entries_.erase(it);
  }

  const size_t limit_;
  std::mutex mutex_;
  std::map<Key, Entry> entries_;
  std::list<Key> lru_;
  int64_t held_ = 0;
};

}  // namespace

std::shared_ptr<const void> cached_packing(const at::Tensor& w, std::vector<int64_t> params,
                                           const std::function<Packing()>& make) {
  return WeightCache::instance().get(w, std::move(params), make);
}

int64_t weight_cache_bytes() { return WeightCache::instance().held(); }

void empty_weight_cache() { WeightCache::instance().clear(); }

}  // namespace gatedrnn
