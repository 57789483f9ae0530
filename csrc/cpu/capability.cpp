#include "capability.h"

#include <cctype>
#include <cstddef>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "isa/gemm_bf16.h"

#if defined(GATEDRNN_CPU_X86) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace gatedrnn {
namespace {

constexpr const char* kVariable = "GATEDRNN_CPU_CAPABILITY";

// The widest ISA of the builds made (setup.py) that this CPU runs. GCC's and clang's
// __builtin_cpu_supports also check (XGETBV) that the operating system saves the
// AVX / AVX-512 registers, not only that CPUID lists the instructions.
CpuCapability best_supported() {
#if defined(GATEDRNN_CPU_X86) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  // ATen's AVX-512 Vectorized<T> uses F, DQ, BW and VL; both AVX builds use FMA, and the
  // AVX2 one F16C (float16 conversions; AVX512F has its own).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma")) {
    return CpuCapability::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return CpuCapability::kAvx2;
  }
#endif
  return CpuCapability::kDefault;
}

// The level `variable` names (the levels, lowest first, by name), or `best` when it is
// unset; throws for a name not among them or a level above best.
template <typename Level, size_t N>
Level forced_level(const char* variable, Level best, const char* const (&names)[N],
                   const char* (*name_of)(Level), const char* what) {
  const char* forced = std::getenv(variable);
  if (forced == nullptr || *forced == '\0') return best;
  std::string name(forced);
  for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  size_t asked = N;
  std::string expected;
  for (size_t i = 0; i < N; ++i) {
    if (name == names[i]) asked = i;
    expected += std::string(i ? ", '" : "'") + names[i] + "'";
  }
  if (asked == N) {
    throw std::runtime_error(std::string(variable) + "='" + forced + "': expected one of " +
                             expected + " (or unset)");
  }
  if (static_cast<int>(asked) > static_cast<int>(best)) {
    throw std::runtime_error(std::string(variable) + "='" + forced + "' asks for the " +
                             name_of(static_cast<Level>(asked)) + " kernels, but this CPU " +
                             what + " runs at most '" + name_of(best) +
                             "'; unset it or ask for a lower one");
  }
  return static_cast<Level>(asked);
}

CpuCapability decide() {
  static constexpr const char* kNames[] = {"default", "avx2", "avx512"};
  return forced_level(kVariable, best_supported(), kNames, &cpu_capability_name,
                      "(with this build)");
}

constexpr const char* kBf16Variable = "GATEDRNN_CPU_BF16";

#if defined(GATEDRNN_CPU_X86) && (defined(__GNUC__) || defined(__clang__))
bool cpuid_bit(unsigned leaf, unsigned subleaf, int reg, unsigned bit) {
  unsigned r[4] = {};
  if (!__get_cpuid_count(leaf, subleaf, &r[0], &r[1], &r[2], &r[3])) return false;
  return (r[reg] >> bit) & 1u;
}

// The operating system saves the AMX tile state (XCR0 bits 17, 18) and, on Linux, lets
// this process use it: the kernel hands out the 8 KiB of tile data per thread only on
// request (arch_prctl ARCH_REQ_XCOMP_PERM; asking again is harmless).
bool amx_usable() {
  constexpr int kEdx = 3;
  if (!cpuid_bit(7, 0, kEdx, 22) || !cpuid_bit(7, 0, kEdx, 24)) return false;  // BF16, TILE
  if (!cpuid_bit(1, 0, 2, 27)) return false;                                   // OSXSAVE
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if (((lo >> 17) & 3u) != 3u) return false;
#if defined(__linux__)
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) != 0) return false;
#endif
  return true;
}
#endif

// The best bfloat16 kernels this CPU runs (and this build has).
Bf16Kernel best_bf16() {
#if defined(GATEDRNN_CPU_X86) && (defined(__GNUC__) || defined(__clang__))
  if (cpu_capability() != CpuCapability::kAvx512) return Bf16Kernel::kNone;
  if (AVX512::gemm_bf16_amx() != nullptr && amx_usable()) return Bf16Kernel::kAmx;
  if (AVX512::gemm_bf16_avx512() != nullptr && cpuid_bit(7, 1, 0, 5)) {
    return Bf16Kernel::kAvx512Bf16;
  }
#endif
  return Bf16Kernel::kNone;
}

Bf16Kernel decide_bf16() {
  static constexpr const char* kNames[] = {"none", "avx512_bf16", "amx"};
  return forced_level(kBf16Variable, best_bf16(), kNames, &bf16_kernel_name,
                      "(with this build and capability)");
}

}  // namespace

Bf16Kernel bf16_kernel() {
  static const Bf16Kernel kernel = decide_bf16();
  return kernel;
}

const char* bf16_kernel_name(Bf16Kernel kernel) {
  switch (kernel) {
    case Bf16Kernel::kAmx:
      return "amx";
    case Bf16Kernel::kAvx512Bf16:
      return "avx512_bf16";
    default:
      return "none";
  }
}

const GemmBf16Kernels* gemm_bf16_kernels() {
#ifdef GATEDRNN_CPU_X86
  switch (bf16_kernel()) {
    case Bf16Kernel::kAmx:
      return AVX512::gemm_bf16_amx();
    case Bf16Kernel::kAvx512Bf16:
      return AVX512::gemm_bf16_avx512();
    default:
      break;
  }
#endif
  return nullptr;
}

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
