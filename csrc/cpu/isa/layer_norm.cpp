// The row LayerNorm's statistics, input gradient and column sums, and the layer-normalized
// LSTM's row passes, for one ISA: setup.py compiles this file once per ISA. The sums run in
// double in kLanes interleaved partial sums, added in lane order at the end: one vector of
// doubles with AVX-512, two with AVX2 (left to the compiler, the three-factor sum of
// input_grad stayed scalar).
#include "layer_norm.h"

#include <cmath>

#include "vec_math.h"

namespace gatedrnn {
namespace CPU_CAPABILITY {
namespace {

using VD = Vec<double>;
constexpr int64_t kLanes = 8;
constexpr int64_t kParts = kLanes / VD::size();

// x[0:kLanes] widened to double, as kParts vectors.
inline void load_lanes(const float* x, VD* out) {
#if defined(CPU_CAPABILITY_AVX512)
  out[0] = VD(_mm512_cvtps_pd(_mm256_loadu_ps(x)));
#elif defined(CPU_CAPABILITY_AVX2)
  out[0] = VD(_mm256_cvtps_pd(_mm_loadu_ps(x)));
  out[1] = VD(_mm256_cvtps_pd(_mm_loadu_ps(x + 4)));
#else
  alignas(64) double wide[kLanes];
  for (int64_t u = 0; u < kLanes; ++u) wide[u] = x[u];
  for (int64_t p = 0; p < kParts; ++p) out[p] = VD::loadu(wide + p * VD::size());
#endif
}
inline void load_lanes(const double* x, VD* out) {
  for (int64_t p = 0; p < kParts; ++p) out[p] = VD::loadu(x + p * VD::size());
}

// Partial sums in kLanes lanes: lane u gets the terms of j = u mod kLanes.
struct LaneSums {
  VD acc[kParts];
  LaneSums() {
    for (int64_t p = 0; p < kParts; ++p) acc[p] = VD(0.0);
  }
  void add(const VD* terms) {
    for (int64_t p = 0; p < kParts; ++p) acc[p] = acc[p] + terms[p];
  }
  // The lanes, for the terms of a last partial chunk.
  void lanes(double* out) const {
    for (int64_t p = 0; p < kParts; ++p) acc[p].store(out + p * VD::size());
  }
};
inline double total(const double* lanes) {
  double sum = 0;
  for (int64_t u = 0; u < kLanes; ++u) sum += lanes[u];
  return sum;
}

template <typename scalar_t>
void row_stats(int64_t n, const scalar_t* a, scalar_t* mean_out, scalar_t* rstd_out) {
  const int64_t full = n / kLanes * kLanes;
  VD v[kParts];
  alignas(64) double lanes[kLanes];
  LaneSums sums;
  for (int64_t j = 0; j < full; j += kLanes) {
    load_lanes(a + j, v);
    sums.add(v);
  }
  sums.lanes(lanes);
  for (int64_t j = full; j < n; ++j) lanes[j % kLanes] += double(a[j]);
  const double mean = total(lanes) / double(n);
  LaneSums squares;
  const VD m(mean);
  for (int64_t j = 0; j < full; j += kLanes) {
    load_lanes(a + j, v);
    for (int64_t p = 0; p < kParts; ++p) v[p] = (v[p] - m) * (v[p] - m);
    squares.add(v);
  }
  squares.lanes(lanes);
  for (int64_t j = full; j < n; ++j) {
    const double d = a[j] - mean;
    lanes[j % kLanes] += d * d;
  }
  const double var = total(lanes) / double(n);
  *mean_out = scalar_t(mean);
  *rstd_out = scalar_t(1.0 / std::sqrt(var + kLayerNormEps));
}

template <typename scalar_t>
void input_grad(int64_t n, const scalar_t* dy, const scalar_t* gain, const scalar_t* xhat,
                scalar_t rstd, scalar_t* dx) {
  const int64_t full = n / kLanes * kLanes;
  VD d[kParts], g[kParts], x[kParts];
  LaneSums s1, s2;  // of dy * gain, and of dy * gain * xhat
  for (int64_t j = 0; j < full; j += kLanes) {
    load_lanes(dy + j, d);
    load_lanes(gain + j, g);
    load_lanes(xhat + j, x);
    for (int64_t p = 0; p < kParts; ++p) {
      d[p] = d[p] * g[p];
      x[p] = d[p] * x[p];
    }
    s1.add(d);
    s2.add(x);
  }
  alignas(64) double l1[kLanes], l2[kLanes];
  s1.lanes(l1);
  s2.lanes(l2);
  for (int64_t j = full; j < n; ++j) {
    const double t = double(dy[j]) * gain[j];
    l1[j % kLanes] += t;
    l2[j % kLanes] += t * xhat[j];
  }
  const scalar_t m1 = scalar_t(total(l1) / double(n)), m2 = scalar_t(total(l2) / double(n));
  for (int64_t j = 0; j < n; ++j) dx[j] = rstd * (dy[j] * gain[j] - m1 - xhat[j] * m2);
}

template <typename scalar_t>
void lstm_gates(int64_t n, const scalar_t* a, scalar_t mean, scalar_t rstd,
                const scalar_t* gain_x, const scalar_t* xhat_x, const scalar_t* gain_h,
                const scalar_t* shift, scalar_t* xhat_h, scalar_t* gate) {
  using V = Vec<scalar_t>;
  const V m(mean), r(rstd);
  for_each_chunk<scalar_t>(n, [&](int64_t j, int64_t cnt) {
    const V xh = (load(a + j, cnt) - m) * r;
    store(xh, xhat_h + j, cnt);
    store(load(gain_x + j, cnt) * load(xhat_x + j, cnt) + load(gain_h + j, cnt) * xh +
              load(shift + j, cnt),
          gate + j, cnt);
  });
}

template <typename scalar_t>
void lstm_cell_forward(int64_t n, const scalar_t* gate, const scalar_t* zc, scalar_t* c,
                       scalar_t* cell, scalar_t* c_out) {
  using V = Vec<scalar_t>;
  const V one(scalar_t(1));
  for_each_chunk<scalar_t>(n, [&](int64_t j, int64_t cnt) {
    const V cv = load(c + j, cnt);
    const V next = load(gate + n + j, cnt) * cv + load(gate + j, cnt) * load(gate + 2 * n + j, cnt);
    store(next, cell + j, cnt);
    const V z = zc ? load(zc + j, cnt) : V(scalar_t(0));
    const V kept = zc ? z * cv + (one - z) * next : next;
    store(kept, c_out + j, cnt);
    store(kept, c + j, cnt);
  });
}

template <typename scalar_t>
void lstm_hidden_forward(int64_t n, const scalar_t* cell, scalar_t mean, scalar_t rstd,
                         const scalar_t* gain_c, const scalar_t* shift_c, const scalar_t* gate,
                         const scalar_t* zh, scalar_t* tl, scalar_t* h, scalar_t* out) {
  using V = Vec<scalar_t>;
  const V one(scalar_t(1)), m(mean), r(rstd);
  for_each_chunk<scalar_t>(n, [&](int64_t j, int64_t cnt) {
    V lc = load(gain_c + j, cnt) * (load(cell + j, cnt) - m) * r;
    lc = lc + (shift_c ? load(shift_c + j, cnt) : V(scalar_t(0)));
    const V t = fast_tanh(lc);
    store(t, tl + j, cnt);
    const V h_new = load(gate + 3 * n + j, cnt) * t;
    const V z = zh ? load(zh + j, cnt) : V(scalar_t(0));
    const V hv = zh ? z * load(h + j, cnt) + (one - z) * h_new : h_new;
    store(hv, h + j, cnt);
    store(hv, out + j, cnt);
  });
}

// *sq += v[l]^2 for the count lanes of v, in double, in lane order.
template <typename scalar_t>
inline void add_squares(const Vec<scalar_t>& v, int64_t count, double* sq) {
  scalar_t lanes[Vec<scalar_t>::size()];
  store(v, lanes, count);
  for (int64_t l = 0; l < count; ++l) *sq += double(lanes[l]) * lanes[l];
}

template <typename scalar_t>
void lstm_output_grads(int64_t n, const scalar_t* go, scalar_t* dh, const scalar_t* m,
                       const scalar_t* dh_g, bool restarted, const scalar_t* zh,
                       const scalar_t* gate, const scalar_t* tl, double* sq, scalar_t* dl,
                       scalar_t* dp) {
  using V = Vec<scalar_t>;
  const V one(scalar_t(1)), zero(scalar_t(0));
  for_each_chunk<scalar_t>(n, [&](int64_t j, int64_t cnt) {
    V d = load(go + j, cnt);
    if (!restarted) {
      const V via_gemm = load(dh_g + j, cnt);
      d = d + (load(dh + j, cnt) + (m ? load(m + j, cnt) * via_gemm : via_gemm));
    }
    if (sq) add_squares(d, cnt, sq);
    const V z = zh ? load(zh + j, cnt) : zero;
    const V dnew = zh ? (one - z) * d : d;  // into h~
    store(zh ? z * d : zero, dh + j, cnt);
    const V o = load(gate + 3 * n + j, cnt), t = load(tl + j, cnt);
    store(dnew * o * (one - t * t), dl + j, cnt);
    store(dnew * t * o * (one - o), dp + 3 * n + j, cnt);
  });
}

template <typename scalar_t>
void lstm_cell_grads(int64_t n, const scalar_t* gate, const scalar_t* c_prev,
                     const scalar_t* zc, double* sq, scalar_t* dc, scalar_t* dp) {
  using V = Vec<scalar_t>;
  const V one(scalar_t(1));
  for_each_chunk<scalar_t>(n, [&](int64_t j, int64_t cnt) {
    const V dcv = load(dc + j, cnt);
    const V z = zc ? load(zc + j, cnt) : V(scalar_t(0));
    const V d = load(dp + j, cnt) + (zc ? (one - z) * dcv : dcv);
    if (sq) add_squares(d, cnt, sq);
    const V i = load(gate + j, cnt), f = load(gate + n + j, cnt), g = load(gate + 2 * n + j, cnt);
    store(d * load(c_prev + j, cnt) * f * (one - f), dp + n + j, cnt);
    store(d * i * (one - g * g), dp + 2 * n + j, cnt);
    store(d * g * i * (one - i), dp + j, cnt);
    store(zc ? d * f + z * dcv : d * f, dc + j, cnt);
  });
}

template <typename scalar_t>
void column_sums(int64_t rows, int64_t cols, const scalar_t* a, int64_t lda, const scalar_t* w,
                 int64_t ldw, double* sum_a, double* sum_aw) {
  const int64_t full = cols / kLanes * kLanes;
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* ar = a + r * lda;
    const scalar_t* wr = w + r * ldw;
    VD av[kParts], wv[kParts];
    for (int64_t j = 0; j < full; j += kLanes) {
      load_lanes(ar + j, av);
      load_lanes(wr + j, wv);
      for (int64_t p = 0; p < kParts; ++p) {
        double* sa = sum_a + j + p * VD::size();
        double* saw = sum_aw + j + p * VD::size();
        (VD::loadu(sa) + av[p]).store(sa);
        (VD::loadu(saw) + av[p] * wv[p]).store(saw);
      }
    }
    for (int64_t j = full; j < cols; ++j) {
      sum_a[j] += double(ar[j]);
      sum_aw[j] += double(ar[j]) * double(wr[j]);
    }
  }
}

}  // namespace

GATEDRNN_CPU_KERNEL_TABLE(LayerNormKernels, layer_norm_kernels, &row_stats<scalar_t>,
                          &input_grad<scalar_t>, &lstm_gates<scalar_t>,
                          &lstm_cell_forward<scalar_t>, &lstm_hidden_forward<scalar_t>,
                          &lstm_output_grads<scalar_t>, &lstm_cell_grads<scalar_t>,
                          &column_sums<scalar_t>)

}  // namespace CPU_CAPABILITY
}  // namespace gatedrnn
