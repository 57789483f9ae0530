#include "capability.h"

#include <cctype>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace gatedrnn {
namespace {

constexpr const char* kVariable = "GATEDRNN_CPU_CAPABILITY";

// The widest ISA of the builds made (setup.py) that this CPU runs. GCC's and clang's
// __builtin_cpu_supports also check (XGETBV) that the operating system saves the
// AVX / AVX-512 registers, not only that CPUID lists the instructions.
CpuCapability best_supported() {
#if defined(GATEDRNN_CPU_X86) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  // ATen's AVX-512 Vectorized<T> uses F, DQ, BW and VL; both AVX builds use FMA.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma")) {
    return CpuCapability::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return CpuCapability::kAvx2;
  }
#endif
  return CpuCapability::kDefault;
}

CpuCapability decide() {
  const CpuCapability best = best_supported();
  const char* forced = std::getenv(kVariable);
  if (forced == nullptr || *forced == '\0') return best;
  std::string name(forced);
  for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  CpuCapability asked;
  if (name == "default") {
    asked = CpuCapability::kDefault;
  } else if (name == "avx2") {
    asked = CpuCapability::kAvx2;
  } else if (name == "avx512") {
    asked = CpuCapability::kAvx512;
  } else {
    throw std::runtime_error(std::string(kVariable) + "='" + forced +
                             "': expected one of 'default', 'avx2', 'avx512' (or unset)");
  }
  if (static_cast<int>(asked) > static_cast<int>(best)) {
    throw std::runtime_error(std::string(kVariable) + "='" + forced + "' asks for the " +
                             cpu_capability_name(asked) +
                             " kernels, but this CPU (with this build) runs at most '" +
                             cpu_capability_name(best) + "'; unset it or ask for a lower one");
  }
  return asked;
}

}  // namespace

CpuCapability cpu_capability() {
  // A throwing initializer leaves it unset, so every call reports the same error.
  static const CpuCapability capability = decide();
  return capability;
}

const char* cpu_capability_name(CpuCapability capability) {
  switch (capability) {
    case CpuCapability::kAvx512:
      return "avx512";
    case CpuCapability::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

}  // namespace gatedrnn
