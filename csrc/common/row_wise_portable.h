#pragma once
// The row-wise ops (the layer-normalized LSTM and GRU, and the plain cells where a
// regularizer needs their time loop) written with ATen ops only: one GEMM and a few
// elementwise ops and row reductions per step, on whatever device the tensors are on. The
// CUDA build registers them as the ops' CUDA kernels (csrc/cuda/layer_norm.cpp); on the CPU
// they run instead of the fused kernels (csrc/cpu/layer_norm_*.cpp) when the environment
// variable GATEDRNN_ROW_WISE_PORTABLE is 1, which is how the CPU test suite checks the code
// the GPU runs. Same schemas, arguments, checks, workspace layout and results as the CPU
// kernels (registration.cpp).
#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

namespace gatedrnn {
namespace portable {

// Whether GATEDRNN_ROW_WISE_PORTABLE is 1 (read at every call: tests set it in-process).
bool enabled_on_cpu();

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_lstm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& ln_ih_weight, const std::optional<at::Tensor>& ln_ih_bias,
    const std::optional<at::Tensor>& ln_hh_weight, const std::optional<at::Tensor>& ln_hh_bias,
    const std::optional<at::Tensor>& ln_cell_weight,
    const std::optional<at::Tensor>& ln_cell_bias, const std::optional<at::Tensor>& state_mask,
    const std::optional<at::Tensor>& zoneout_h, const std::optional<at::Tensor>& zoneout_c,
    bool reverse, bool need_workspace, double grad_clip, const std::optional<at::Tensor>& reset);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
layer_norm_lstm_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& ln_ih_weight, const std::optional<at::Tensor>& ln_hh_weight,
    const std::optional<at::Tensor>& ln_cell_weight, const std::optional<at::Tensor>& state_mask,
    const std::optional<at::Tensor>& zoneout_h, const std::optional<at::Tensor>& zoneout_c,
    const at::Tensor& output, const at::Tensor& workspace, bool reverse, double grad_clip,
    const std::optional<at::Tensor>& grad_cell_states, const std::optional<at::Tensor>& reset,
    bool record_norms, std::array<bool, 3> output_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_gru_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& ln_ih_weight,
    const std::optional<at::Tensor>& ln_ih_bias, const std::optional<at::Tensor>& ln_hh_weight,
    const std::optional<at::Tensor>& ln_hh_bias, const std::optional<at::Tensor>& state_mask,
    const std::optional<at::Tensor>& zoneout_h, bool reverse, bool need_workspace,
    double grad_clip, const std::optional<at::Tensor>& reset);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor, at::Tensor>
layer_norm_gru_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                        const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                        const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                        const std::optional<at::Tensor>& ln_ih_weight,
                        const std::optional<at::Tensor>& ln_hh_weight,
                        const std::optional<at::Tensor>& state_mask,
                        const std::optional<at::Tensor>& zoneout_h, const at::Tensor& output,
                        const at::Tensor& workspace, bool reverse, double grad_clip,
                        const std::optional<at::Tensor>& reset, bool record_norms,
                        std::array<bool, 3> output_mask);

}  // namespace portable
}  // namespace gatedrnn
