// The row-wise ops on CUDA (the layer-normalized cells, and zoneout, variational state
// dropout and in-kernel gradient clipping of the plain LSTM and GRU): the portable ATen
// implementation (common/row_wise_portable.h), one cuBLAS GEMM and a few elementwise and
// row-reduction kernels per step. The CPU test suite runs the same code on the CPU
// (GATEDRNN_ROW_WISE_PORTABLE=1); no fused CUDA kernel of these cells yet.
#include <torch/library.h>

#include "../common/row_wise_portable.h"

namespace gatedrnn {
namespace cuda {

TORCH_LIBRARY_IMPL(gatedrnn, CUDA, m) {
  m.impl("layer_norm_lstm_forward", &portable::layer_norm_lstm_forward);
  m.impl("layer_norm_lstm_backward", &portable::layer_norm_lstm_backward);
  m.impl("layer_norm_gru_forward", &portable::layer_norm_gru_forward);
  m.impl("layer_norm_gru_backward", &portable::layer_norm_gru_backward);
}

}  // namespace cuda
}  // namespace gatedrnn
