// The GRU's pointwise passes for one ISA: setup.py compiles this file once per ISA.
//   r = s(W_ir x + b_ir + W_hr h + b_hr), z = s(W_iz x + b_iz + W_hz h + b_hz)
//   n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h
#include "gru.h"

#include "vec_math.h"

namespace gatedrnn {
namespace CPU_CAPABILITY {
namespace {

template <typename scalar_t, typename kept_t>
void forward_units(int64_t n, int64_t H, int64_t u0, int64_t len, const scalar_t* xg,
                   const scalar_t* hg, int64_t ld, const scalar_t* b_ih, const scalar_t* b_hh,
                   const scalar_t* h_cur, kept_t* ws, scalar_t* h_out, scalar_t* h_next) {
  using V = Vec<scalar_t>;
  const int64_t ws_ld = 4 * H;
  const scalar_t* bi = b_ih + u0;
  const scalar_t* bh = b_hh + u0;
  for (int64_t b = 0; b < n; ++b) {
    const scalar_t* x = xg + b * ld;
    const scalar_t* h = hg + b * ld;
    kept_t* g = ws ? ws + b * ws_ld + u0 : nullptr;
    const int64_t row = b * H + u0;
    for_each_chunk<scalar_t>(len, [&](int64_t j, int64_t cnt) {
      const V r = sigmoid(load(x + j, cnt) + load(bi + j, cnt) + load(h + j, cnt) +
                          load(bh + j, cnt));
      const V z = sigmoid(load(x + len + j, cnt) + load(bi + H + j, cnt) +
                          load(h + len + j, cnt) + load(bh + H + j, cnt));
      const V hn = load(h + 2 * len + j, cnt) + load(bh + 2 * H + j, cnt);
      const V nn = fast_tanh(load(x + 2 * len + j, cnt) + load(bi + 2 * H + j, cnt) + r * hn);
      const V h_new = nn + z * (load(h_cur + row + j, cnt) - nn);
      if (g) {
        store_kept(r, g + j, cnt);
        store_kept(z, g + H + j, cnt);
        store_kept(nn, g + 2 * H + j, cnt);
        store_kept(hn, g + 3 * H + j, cnt);
      }
      store(h_new, h_next + row + j, cnt);
      store(h_new, h_out + row + j, cnt);
    });
  }
}

template <typename scalar_t, typename kept_t, bool kNorms>
void backward_rows(int64_t n, int64_t H, int64_t u0, int64_t len, const scalar_t* go,
                    int64_t go_ld, scalar_t* dh_state, const kept_t* ws,
                    const PrevRows<scalar_t>& h_prev, scalar_t* dgates, double* sq) {
  using V = Vec<scalar_t>;
  const V one(scalar_t(1));
  for (int64_t b = 0; b < n; ++b) {
    const kept_t* g = ws + b * 4 * H + u0;
    scalar_t* dg = dgates + b * kGruGradCols * H + u0;
    const scalar_t* hp_row = h_prev.row(b) + u0;
    const int64_t e = b * H + u0;
    V sq_h(scalar_t(0));
    for_each_chunk<scalar_t>(len, [&](int64_t j, int64_t cnt) {
      const V r = load_kept<scalar_t>(g + j, cnt), z = load_kept<scalar_t>(g + H + j, cnt),
              nn = load_kept<scalar_t>(g + 2 * H + j, cnt),
              hn = load_kept<scalar_t>(g + 3 * H + j, cnt);
      const V d = load(go + b * go_ld + u0 + j, cnt) + load(dh_state + e + j, cnt);
      const V hp = load(hp_row + j, cnt);
      if constexpr (kNorms) sq_h = sq_h + d * d;  // lanes past a partial chunk add 0
      const V dn = d * (one - z) * (one - nn * nn);
      const V dz = d * (hp - nn) * z * (one - z);
      const V dr = dn * hn * r * (one - r);
      store(dr, dg + j, cnt);
      store(dz, dg + H + j, cnt);
      store(dn * r, dg + 2 * H + j, cnt);
      store(dn, dg + 3 * H + j, cnt);
      store(d * z, dh_state + e + j, cnt);
    });
    if constexpr (kNorms) sq[0] += sum_lanes(sq_h);
  }
}

template <typename scalar_t, typename kept_t>
void backward_units(int64_t n, int64_t H, int64_t u0, int64_t len, const scalar_t* go,
                    int64_t go_ld, scalar_t* dh_state, const kept_t* ws,
                    const PrevRows<scalar_t>& h_prev, scalar_t* dgates, double* sq) {
  if (sq != nullptr) {
    backward_rows<scalar_t, kept_t, true>(n, H, u0, len, go, go_ld, dh_state, ws, h_prev,
                                          dgates, sq);
  } else {
    backward_rows<scalar_t, kept_t, false>(n, H, u0, len, go, go_ld, dh_state, ws, h_prev,
                                           dgates, sq);
  }
}

}  // namespace

GATEDRNN_CPU_KERNEL_TABLE(GruKernels, gru_kernels, &forward_units<scalar_t, scalar_t>,
                          &backward_units<scalar_t, scalar_t>,
                          &forward_units<scalar_t, uint16_t>,
                          &backward_units<scalar_t, uint16_t>)

}  // namespace CPU_CAPABILITY
}  // namespace gatedrnn
