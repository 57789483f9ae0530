#pragma once
// Shared by every cell: argument validation and the time schedule of a
// (possibly packed) sequence. Padded input [T, N, I] is treated as packed data
// [T*N, I] whose batch_sizes are all N, so one code path serves both.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace gatedrnn {

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

// Time steps of one direction. Row r of the flat [R, *] layout at time t is
// offsets[t] + b for batch row b < sizes[t].
struct Schedule {
  std::vector<int64_t> sizes;
  std::vector<int64_t> offsets;
  int64_t rows = 0;    // R
  int64_t batch = 0;   // N
  bool reverse = false;

  int64_t steps() const { return static_cast<int64_t>(sizes.size()); }
  // The time index processed at the k-th step.
  int64_t time_at(int64_t k) const { return reverse ? steps() - 1 - k : k; }
};

// Everything a cell's op needs to know about its arguments, checked once.
struct RnnShapes {
  int64_t input_size = 0;
  int64_t hidden_size = 0;
  int64_t state_size = 0;  // P: proj_size for a projected LSTM, else hidden_size
  Schedule schedule;
};

inline void check_same_dtype(const char* op, const at::Tensor& ref, const at::Tensor& t,
                             const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": expected ", name,
                   " to have dtype ", ref.scalar_type(), " (the dtype of input), got ",
                   t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": expected ", name, " on device ",
              ref.device(), " (the device of input), got ", t.device());
}

// grad_clip (recurrent_grad_clip): 0 is off, else the bound of the gate pre-activations'
// gradients.
inline void check_grad_clip(const char* op, double clip) {
  TORCH_CHECK_VALUE(std::isfinite(clip) && clip >= 0, op,
                    ": grad_clip must be a finite number >= 0 (0: off), got ", clip);
}

inline void check_shape(const char* op, const at::Tensor& t, const char* name,
                        at::IntArrayRef expected, const char* meaning) {
  TORCH_CHECK(t.sizes() == expected, op, ": expected ", name, " of shape ", expected,
              " (", meaning, "), got ", shape_str(t));
}

inline void check_blas_extent(const char* op, const char* what, int64_t extent) {
  TORCH_CHECK(extent <= std::numeric_limits<int32_t>::max(), op, ": ", what, " = ", extent,
              " exceeds 2147483647, the largest extent 32-bit BLAS indexing can address");
}

// Validates input/batch_sizes and builds the schedule.
//   input: [T, N, I] (batch_sizes undefined) or packed [R, I]
//   batch_sizes: [T] int64 on the CPU, non-increasing, positive, summing to R
inline Schedule make_schedule(const char* op, const at::Tensor& input,
                              const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  Schedule s;
  s.reverse = reverse;
  if (!batch_sizes.has_value() || !batch_sizes->defined()) {
    TORCH_CHECK_VALUE(input.dim() == 3, op, ": expected input of shape [T, N, input_size] ",
                      "when batch_sizes is None, got ", shape_str(input));
    const int64_t T = input.size(0), N = input.size(1);
    s.batch = N;
    s.rows = T * N;
    s.sizes.assign(T, N);
    s.offsets.resize(T);
    for (int64_t t = 0; t < T; ++t) s.offsets[t] = t * N;
    return s;
  }
  const at::Tensor& bs = *batch_sizes;
  // batch_sizes mistakes are RuntimeErrors, as in torch.nn.
  TORCH_CHECK(input.dim() == 2, op, ": expected packed input of shape ",
              "[sum(batch_sizes), input_size] when batch_sizes is given, got ",
              shape_str(input));
  TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(), op,
              ": expected batch_sizes to be a 1-D int64 CPU tensor, got ", bs.dim(), "-D ",
              bs.scalar_type(), " on ", bs.device());
  TORCH_CHECK(bs.numel() > 0, op, ": batch_sizes must not be empty");
  const at::Tensor bsc = bs.contiguous();
  const int64_t* p = bsc.const_data_ptr<int64_t>();
  const int64_t T = bsc.numel();
  s.sizes.assign(p, p + T);
  s.offsets.resize(T);
  int64_t total = 0;
  for (int64_t t = 0; t < T; ++t) {
    // Trailing steps of batch size 0 are allowed (torch.nn accepts them): they do nothing.
    TORCH_CHECK(s.sizes[t] >= 0, op, ": batch_sizes must not be negative, got ", s.sizes[t],
                " at index ", t);
    TORCH_CHECK(t == 0 || s.sizes[t] <= s.sizes[t - 1], op,
                ": batch_sizes must be non-increasing, got ", s.sizes[t > 0 ? t - 1 : 0],
                " then ", s.sizes[t], " at index ", t);
    s.offsets[t] = total;
    total += s.sizes[t];
  }
  TORCH_CHECK(total == input.size(0), op, ": batch_sizes sum to ", total, " but input has ",
              input.size(0), " rows");
  s.batch = s.sizes[0];
  s.rows = total;
  return s;
}

// Checks input, states and weights of a cell with `gates` gate blocks.
// w_hr is the LSTM projection (undefined for the other cells).
inline RnnShapes check_rnn_args(const char* op, int64_t gates, const at::Tensor& input,
                                const std::optional<at::Tensor>& batch_sizes,
                                const at::Tensor& h0, const at::Tensor* c0,
                                const at::Tensor& w_ih, const at::Tensor& w_hh,
                                const std::optional<at::Tensor>& b_ih,
                                const std::optional<at::Tensor>& b_hh,
                                const std::optional<at::Tensor>& w_hr, bool reverse) {
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op,
                   ": expected input to be a floating-point tensor, got ",
                   input.scalar_type());
  check_same_dtype(op, input, w_ih, "w_ih");
  check_same_dtype(op, input, w_hh, "w_hh");
  check_same_dtype(op, input, h0, "h0");
  if (c0) check_same_dtype(op, input, *c0, "c0");
  TORCH_CHECK(w_ih.dim() == 2, op, ": expected w_ih to be 2-D, got ", shape_str(w_ih));
  TORCH_CHECK(w_hh.dim() == 2, op, ": expected w_hh to be 2-D, got ", shape_str(w_hh));
  // Weight shapes are RuntimeErrors, as in torch.nn (its kernels check them).
  TORCH_CHECK(w_ih.size(0) % gates == 0 && w_ih.size(0) > 0, op,
                    ": expected w_ih to have ", gates, "*hidden_size rows, got ",
                    shape_str(w_ih));
  RnnShapes r;
  r.hidden_size = w_ih.size(0) / gates;
  r.input_size = w_ih.size(1);
  const int64_t H = r.hidden_size;
  r.state_size = H;
  if (w_hr.has_value() && w_hr->defined()) {
    check_same_dtype(op, input, *w_hr, "w_hr");
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == H && w_hr->size(0) > 0 &&
                          w_hr->size(0) < H,
                      op, ": expected w_hr of shape [proj_size, hidden_size=", H,
                      "] with 0 < proj_size < hidden_size, got ", shape_str(*w_hr));
    r.state_size = w_hr->size(0);
  }
  const int64_t P = r.state_size;
  TORCH_CHECK(w_hh.size(0) == w_ih.size(0), op, ": expected w_ih and w_hh to have the same ",
              "number of rows (", gates, "*hidden_size), got w_ih ", shape_str(w_ih),
              " and w_hh ", shape_str(w_hh));
  check_shape(op, w_hh, "w_hh", {gates * H, P}, "gates*hidden_size, hidden or proj size");
  const auto check_bias = [&](const std::optional<at::Tensor>& b, const char* name) {
    if (!b.has_value() || !b->defined()) return;
    check_same_dtype(op, input, *b, name);
    check_shape(op, *b, name, {gates * H}, "gates*hidden_size");
  };
  check_bias(b_ih, "b_ih");
  check_bias(b_hh, "b_hh");
  r.schedule = make_schedule(op, input, batch_sizes, reverse);
  TORCH_CHECK(input.size(-1) == r.input_size, op, ": expected input with ",
                    r.input_size, " features (w_ih is ", shape_str(w_ih), "), got input ",
                    shape_str(input));
  check_shape(op, h0, "h0", {r.schedule.batch, P}, "batch, hidden or proj size");
  if (c0) check_shape(op, *c0, "c0", {r.schedule.batch, H}, "batch, hidden_size");
  // Every extent below reaches BLAS as a 32-bit int (a size or a leading dimension);
  // checked before anything is allocated, so an oversized call fails cleanly.
  check_blas_extent(op, "input rows (T*N or sum(batch_sizes))", r.schedule.rows);
  check_blas_extent(op, "input_size (input and w_ih)", r.input_size);
  check_blas_extent(op, "(gates + 1) * hidden_size (w_ih)", (gates + 1) * H);
  return r;
}

// An op's flat [R, P] result laid out like the input: [T, N, P] when padded, [R, P] when
// packed; a gradient not wanted (not_wanted's [0]) stays as it is. On flat's storage but
// not a view of flat: autograd marks an op's output that is a view as one of a function
// returning several views, and refuses to let it be modified in place, where torch.nn's
// outputs may be (out.mul_(2), or a ReLU(inplace=True) after the module), and so would a
// view of it be (the RNNCell's new h, functional.py's _new_states).
inline at::Tensor shaped_like_input(const at::Tensor& flat, const at::Tensor& input) {
  if (input.dim() != 3 || flat.dim() != 2) return flat;
  at::Tensor shaped = flat.new_empty({0});
  shaped.set_(flat.storage(), flat.storage_offset(),
              {input.size(0), input.size(1), flat.size(1)},
              {input.size(1) * flat.stride(0), flat.stride(0), flat.stride(1)});
  return shaped;
}

}  // namespace gatedrnn
