// Persistent forward kernel of the RNN (see persistent.h).
#include "persistent.cuh"

namespace gatedrnn {
namespace kernels {

using persistent_detail::Cell;

template <typename T>
cudaError_t rnn_persistent_plan(int64_t batch, int64_t hidden, PersistentPlan* plan) {
  return persistent_detail::plan_impl<Cell::kRnn, T>(batch, hidden, plan);
}

template <typename T>
cudaError_t rnn_persistent_forward(const PersistentParams<T>& p, const PersistentPlan& plan,
                                   cudaStream_t stream) {
  return persistent_detail::forward_impl<Cell::kRnn, T>(p, plan, stream);
}

#define GATEDRNN_INSTANTIATE(T)                                                         \
  template cudaError_t rnn_persistent_plan<T>(int64_t, int64_t, PersistentPlan*);       \
  template cudaError_t rnn_persistent_forward<T>(const PersistentParams<T>&,            \
                                                 const PersistentPlan&, cudaStream_t);
GATEDRNN_INSTANTIATE(float)
GATEDRNN_INSTANTIATE(double)
GATEDRNN_INSTANTIATE(__half)
GATEDRNN_INSTANTIATE(__nv_bfloat16)
#undef GATEDRNN_INSTANTIATE

}  // namespace kernels
}  // namespace gatedrnn
