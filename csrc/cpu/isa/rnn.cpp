// The Elman RNN's pointwise passes for one ISA: setup.py compiles this file once per ISA.
#include "rnn.h"

#include "vec_math.h"

namespace gatedrnn {
namespace CPU_CAPABILITY {
namespace {

template <typename scalar_t>
void forward_units(int64_t n, int64_t H, int64_t u0, int64_t len, bool relu,
                   const scalar_t* pre, const scalar_t* bias, scalar_t* h_out,
                   scalar_t* h_next) {
  using V = Vec<scalar_t>;
  const V zero(scalar_t(0));
  for (int64_t r = 0; r < n; ++r) {
    const scalar_t* p = pre + r * H + u0;
    scalar_t* o = h_out + r * H + u0;
    scalar_t* hn = h_next + r * H + u0;
    for_each_chunk<scalar_t>(len, [&](int64_t j, int64_t cnt) {
      const V a = load(p + j, cnt) + load(bias + u0 + j, cnt);
      const V h = relu ? at::vec::maximum(a, zero) : fast_tanh(a);
      store(h, o + j, cnt);
      store(h, hn + j, cnt);
    });
  }
}

template <typename scalar_t, bool kNorms>
void backward_rows(int64_t n, int64_t H, int64_t u0, int64_t len, bool relu,
                    const scalar_t* h_rows, const scalar_t* go, int64_t go_ld,
                    const scalar_t* dh_state, scalar_t* dgates, scalar_t clip, double* sq) {
  using V = Vec<scalar_t>;
  const V one(scalar_t(1)), zero(scalar_t(0)), high(clip), low(-clip);
  for (int64_t b = 0; b < n; ++b) {
    const int64_t e = b * H + u0;
    V sq_h(scalar_t(0));
    for_each_chunk<scalar_t>(len, [&](int64_t j, int64_t cnt) {
      const V h = load(h_rows + e + j, cnt);
      const V d = load(go + b * go_ld + u0 + j, cnt) + load(dh_state + e + j, cnt);
      if constexpr (kNorms) sq_h = sq_h + d * d;  // lanes past a partial chunk add 0
      // relu' selects rather than multiplies, as torch.nn does: a NaN output passes the
      // gradient on, and an infinite gradient stops at h <= 0 instead of 0 * inf.
      V dpre = relu ? V::blendv(d, zero, h <= zero) : d * (one - h * h);
      if (clip > 0) {  // selects, so that a NaN stays NaN, as std::clamp leaves it
        dpre = V::blendv(dpre, high, dpre > high);
        dpre = V::blendv(dpre, low, dpre < low);
      }
      store(dpre, dgates + e + j, cnt);
    });
    if constexpr (kNorms) sq[0] += sum_lanes(sq_h);
  }
}

template <typename scalar_t>
void backward_units(int64_t n, int64_t H, int64_t u0, int64_t len, bool relu,
                    const scalar_t* h_rows, const scalar_t* go, int64_t go_ld,
                    const scalar_t* dh_state, scalar_t* dgates, scalar_t clip, double* sq) {
  if (sq != nullptr) {
    backward_rows<scalar_t, true>(n, H, u0, len, relu, h_rows, go, go_ld, dh_state, dgates,
                                  clip, sq);
  } else {
    backward_rows<scalar_t, false>(n, H, u0, len, relu, h_rows, go, go_ld, dh_state, dgates,
                                   clip, sq);
  }
}

}  // namespace

GATEDRNN_CPU_KERNEL_TABLE(RnnKernels, rnn_kernels, &forward_units<scalar_t>,
                          &backward_units<scalar_t>)

}  // namespace CPU_CAPABILITY
}  // namespace gatedrnn
