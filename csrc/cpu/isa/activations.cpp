// Elementwise activations over arrays for one ISA: setup.py compiles this file once per ISA.
#include "activations.h"

#include "vec_math.h"

namespace gatedrnn {
namespace CPU_CAPABILITY {
namespace {

template <typename scalar_t>
void sigmoid_array(int64_t n, const scalar_t* in, scalar_t* out) {
  for_each_chunk<scalar_t>(n, [&](int64_t j, int64_t cnt) {
    store(sigmoid(load(in + j, cnt)), out + j, cnt);
  });
}

template <typename scalar_t>
void tanh_array(int64_t n, const scalar_t* in, scalar_t* out) {
  for_each_chunk<scalar_t>(n, [&](int64_t j, int64_t cnt) {
    store(fast_tanh(load(in + j, cnt)), out + j, cnt);
  });
}

}  // namespace

GATEDRNN_CPU_KERNEL_TABLE(ActivationKernels, activation_kernels, &sigmoid_array<scalar_t>,
                          &tanh_array<scalar_t>)

}  // namespace CPU_CAPABILITY
}  // namespace gatedrnn
