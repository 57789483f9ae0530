#pragma once
// Which build of the CPU micro-kernels runs: one build of the extension runs on every
// x86-64 CPU. Every file in csrc/cpu/isa/ is compiled once per vector ISA (setup.py),
// its code in a namespace named after the ISA (DEFAULT, AVX2, AVX512, as ATen's
// CPU_CAPABILITY); everything else is compiled for the baseline and picks one of those
// builds at run time, from CPUID, as ATen does with ATEN_CPU_CAPABILITY.
// GATEDRNN_CPU_CAPABILITY=default|avx2|avx512 forces one the CPU supports.
//
// Only the micro-kernels (a cell's pointwise pass, the small-batch GEMM panel) are built
// per ISA, so what depends on the ISA stays in the few small files of csrc/cpu/isa/.
// Plain C++, no torch headers: the isa/ files include it too.
#include <cstdint>

namespace gatedrnn {

enum class CpuCapability : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// The capability in use: the best this CPU supports of those built, or the one
// GATEDRNN_CPU_CAPABILITY names. Decided on the first call; throws std::runtime_error
// (on this and every later call) when the variable names an unknown capability or one
// this CPU or build lacks.
CpuCapability cpu_capability();
const char* cpu_capability_name(CpuCapability capability);

}  // namespace gatedrnn

// Declares a kernel table getter `name<scalar_t>()` in each ISA's namespace (defined by
// the file in csrc/cpu/isa/ that fills the table) and gatedrnn::name<scalar_t>(), which
// returns the table of the capability in use. Table<scalar_t> is a struct of function
// pointers. The AVX builds exist on x86-64 only (setup.py defines GATEDRNN_CPU_X86).
#ifdef GATEDRNN_CPU_X86
#define GATEDRNN_ISA_NAMESPACES_X86(Table, name)                                       \
  namespace AVX2 {                                                                      \
  template <typename scalar_t>                                                          \
  const Table<scalar_t>& name();                                                        \
  }                                                                                     \
  namespace AVX512 {                                                                    \
  template <typename scalar_t>                                                          \
  const Table<scalar_t>& name();                                                        \
  }
#define GATEDRNN_ISA_CASES_X86(name)                 \
  case CpuCapability::kAvx512:                       \
    return AVX512::name<scalar_t>();                 \
  case CpuCapability::kAvx2:                         \
    return AVX2::name<scalar_t>();
#else
#define GATEDRNN_ISA_NAMESPACES_X86(Table, name)
#define GATEDRNN_ISA_CASES_X86(name)
#endif

#define GATEDRNN_CPU_KERNELS(Table, name)         \
  namespace DEFAULT {                             \
  template <typename scalar_t>                    \
  const Table<scalar_t>& name();                  \
  }                                               \
  GATEDRNN_ISA_NAMESPACES_X86(Table, name)        \
  template <typename scalar_t>                    \
  const Table<scalar_t>& name() {                 \
    switch (cpu_capability()) {                   \
      GATEDRNN_ISA_CASES_X86(name)                \
      default:                                    \
        return DEFAULT::name<scalar_t>();         \
    }                                             \
  }

// In a file of csrc/cpu/isa/, inside namespace gatedrnn::CPU_CAPABILITY: defines that ISA's
// name<scalar_t>() for float and double, returning the table {entries} (which may name
// scalar_t), e.g. GATEDRNN_CPU_KERNEL_TABLE(LstmKernels, lstm_kernels, &forward<scalar_t>).
#define GATEDRNN_CPU_KERNEL_TABLE(Table, name, ...)      \
  template <typename scalar_t>                           \
  const Table<scalar_t>& name() {                        \
    static constexpr Table<scalar_t> table{__VA_ARGS__}; \
    return table;                                        \
  }                                                      \
  template const Table<float>& name<float>();            \
  template const Table<double>& name<double>();
