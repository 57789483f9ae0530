#pragma once
// Types shared by the torch-free CUDA kernels and the glue that calls them
// (csrc/cuda/). Host-visible: no device code here.
//
// Element types: float, double, __half, __nv_bfloat16. The pointwise math runs
// in acc_t<T> (float for float and the half types, double for double); state
// that never goes through a GEMM (the LSTM cell state, dL/dc) is kept in acc_t.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace gatedrnn {
namespace kernels {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

// The three cells; the persistent kernel is one template over them.
enum class Cell { kLstm, kGru, kRnn };

}  // namespace kernels
}  // namespace gatedrnn
