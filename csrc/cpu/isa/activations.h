#pragma once
// Elementwise activations over arrays, built once per ISA (isa/activations.cpp): the
// layer-normalized cells' pointwise passes (plain C++, cpu/layer_norm_*.cpp) run them on
// whole gate rows. The same sigmoid and tanh as the plain cells' kernels (vec_math.h);
// libm's, one element at a time, made a LayerNormLSTM step at (N, H) = (16, 128) 3.5
// times the plain LSTM's.
#include <cstdint>

#include "../capability.h"

namespace gatedrnn {

template <typename scalar_t>
struct ActivationKernels {
  // out[j] = sigmoid(in[j]) (tanh(in[j])) for j < n; out may be in.
  void (*sigmoid)(int64_t n, const scalar_t* in, scalar_t* out);
  void (*tanh)(int64_t n, const scalar_t* in, scalar_t* out);
};

GATEDRNN_CPU_KERNELS(ActivationKernels, activation_kernels)

}  // namespace gatedrnn
