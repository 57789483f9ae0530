#pragma once
// A size in MiB from an environment variable, for the CPU caches' limits.
#include <c10/util/Exception.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>

namespace gatedrnn {

// Bytes: the variable `name` read as a whole number of MiB, or default_mib when it is
// unset or empty; a clear error naming it otherwise. `what` is the cache it sizes.
inline size_t env_mib(const char* name, long long default_mib, const char* what) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return static_cast<size_t>(default_mib) << 20;
  char* end = nullptr;
  errno = 0;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK(errno == 0 && *end == '\0' && mb >= 0 && mb <= (1ll << 30), "gatedrnn: ", name,
              " must be a whole number of MiB (0 turns the ", what, " off), got '", env, "'");
  return static_cast<size_t>(mb) << 20;
}

}  // namespace gatedrnn
