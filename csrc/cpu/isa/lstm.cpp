// The LSTM's pointwise passes for one ISA: setup.py compiles this file once per ISA.
#include "lstm.h"

#include <type_traits>

#include "vec_math.h"

namespace gatedrnn {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kGates = 4;

// A workspace row's gates (kept as gate_t) and cell state, from unit u0.
template <typename gate_t, typename row_t>
auto gates_of(row_t* row, int64_t u0) {
  using gate_ptr = std::conditional_t<std::is_const_v<row_t>, const gate_t*, gate_t*>;
  return reinterpret_cast<gate_ptr>(row) + u0;
}
template <typename scalar_t, typename gate_t, typename row_t>
row_t* cells_of(row_t* row, int64_t H, int64_t u0) {
  return row + lstm_gate_columns<scalar_t, gate_t>(H) + u0;
}

template <typename scalar_t, typename gate_t>
void forward_units(int64_t n, int64_t H, int64_t u0, int64_t len, const scalar_t* pre,
                   int64_t pre_ld, const scalar_t* bias, scalar_t* c_state, scalar_t* ws,
                   int64_t ws_ld, scalar_t* h_out, int64_t h_out_ld, scalar_t* h_next,
                   int64_t h_next_ld) {
  using V = Vec<scalar_t>;
  const scalar_t* bu = bias + u0;
  for (int64_t b = 0; b < n; ++b) {
    const scalar_t* p = pre + b * pre_ld;
    scalar_t* c = c_state + b * H + u0;
    gate_t* g = ws ? gates_of<gate_t>(ws + b * ws_ld, u0) : nullptr;
    scalar_t* cw = ws ? cells_of<scalar_t, gate_t>(ws + b * ws_ld, H, u0) : nullptr;
    for_each_chunk<scalar_t>(len, [&](int64_t j, int64_t cnt) {
      const auto gate = [&](int64_t q) {
        return load(p + q * len + j, cnt) + load(bu + q * H + j, cnt);
      };
      const V i = sigmoid(gate(0)), f = sigmoid(gate(1)), gg = fast_tanh(gate(2)),
              o = sigmoid(gate(3));
      const V c_new = f * load(c + j, cnt) + i * gg;
      const V h = o * fast_tanh(c_new);
      if (g) {
        store_kept(i, g + j, cnt);
        store_kept(f, g + H + j, cnt);
        store_kept(gg, g + 2 * H + j, cnt);
        store_kept(o, g + 3 * H + j, cnt);
        store(c_new, cw + j, cnt);
      }
      store(c_new, c + j, cnt);
      store(h, h_out + b * h_out_ld + u0 + j, cnt);
      if (h_next) store(h, h_next + b * h_next_ld + u0 + j, cnt);
    });
  }
}

template <typename scalar_t, typename gate_t, bool kNorms>
void backward_rows(int64_t n, int64_t H, int64_t u0, int64_t len, const scalar_t* dh,
                   int64_t dh_ld, const scalar_t* dh_more, const scalar_t* ws, int64_t ws_ld,
                   const PrevRows<scalar_t>& c_prev, scalar_t* dc_state, scalar_t* dgates,
                   double* sq) {
  using V = Vec<scalar_t>;
  const V one(scalar_t(1));
  for (int64_t b = 0; b < n; ++b) {
    const gate_t* g = gates_of<gate_t>(ws + b * ws_ld, u0);
    const scalar_t* cw = cells_of<scalar_t, gate_t>(ws + b * ws_ld, H, u0);
    const scalar_t* cp_row = c_prev.row(b) + u0;
    scalar_t* dg = dgates + b * kGates * H + u0;
    const int64_t e = b * H + u0;
    V sq_h(scalar_t(0)), sq_c(scalar_t(0));
    for_each_chunk<scalar_t>(len, [&](int64_t j, int64_t cnt) {
      const V i = load_kept<scalar_t>(g + j, cnt), f = load_kept<scalar_t>(g + H + j, cnt),
              gg = load_kept<scalar_t>(g + 2 * H + j, cnt),
              o = load_kept<scalar_t>(g + 3 * H + j, cnt), c = load(cw + j, cnt);
      const V cp = load(cp_row + j, cnt);
      const V dh_own = load(dh + b * dh_ld + u0 + j, cnt);
      const V dhv = dh_more ? dh_own + load(dh_more + e + j, cnt) : dh_own;
      const V tc = fast_tanh(c);
      const V dc = load(dc_state + e + j, cnt) + dhv * o * (one - tc * tc);
      if constexpr (kNorms) {
        // Lanes past a partial chunk load as 0, so they add nothing.
        sq_h = sq_h + dhv * dhv;
        sq_c = sq_c + dc * dc;
      }
      store(dc * i * (one - i) * gg, dg + j, cnt);
      store(dc * f * (one - f) * cp, dg + H + j, cnt);
      store(dc * i * (one - gg * gg), dg + 2 * H + j, cnt);
      store(dhv * tc * o * (one - o), dg + 3 * H + j, cnt);
      store(dc * f, dc_state + e + j, cnt);
    });
    if constexpr (kNorms) {
      sq[0] += sum_lanes(sq_h);
      sq[1] += sum_lanes(sq_c);
    }
  }
}

template <typename scalar_t, typename gate_t>
void backward_units(int64_t n, int64_t H, int64_t u0, int64_t len, const scalar_t* dh,
                    int64_t dh_ld, const scalar_t* dh_more, const scalar_t* ws, int64_t ws_ld,
                    const PrevRows<scalar_t>& c_prev, scalar_t* dc_state, scalar_t* dgates,
                    double* sq) {
  if (sq != nullptr) {
    backward_rows<scalar_t, gate_t, true>(n, H, u0, len, dh, dh_ld, dh_more, ws, ws_ld,
                                          c_prev, dc_state, dgates, sq);
  } else {
    backward_rows<scalar_t, gate_t, false>(n, H, u0, len, dh, dh_ld, dh_more, ws, ws_ld,
                                           c_prev, dc_state, dgates, sq);
  }
}

}  // namespace

GATEDRNN_CPU_KERNEL_TABLE(LstmKernels, lstm_kernels, &forward_units<scalar_t, scalar_t>,
                          &backward_units<scalar_t, scalar_t>,
                          &forward_units<scalar_t, c10::Half>,
                          &backward_units<scalar_t, c10::Half>)

}  // namespace CPU_CAPABILITY
}  // namespace gatedrnn
