// The persistent forward kernel (persistent.cuh), instantiated for every cell and type.
#include "persistent.cuh"

namespace gatedrnn {
namespace kernels {

template <Cell C, typename T>
cudaError_t persistent_plan(int64_t batch, int64_t hidden, PersistentPlan* plan) {
  return persistent_detail::plan_impl<C, T>(batch, hidden, plan);
}

template <Cell C, typename T>
cudaError_t persistent_forward(const PersistentParams<T>& p, const PersistentPlan& plan,
                               cudaStream_t stream) {
  return persistent_detail::forward_impl<C, T>(p, plan, stream);
}

#define GATEDRNN_INSTANTIATE(C, T)                                                      \
  template cudaError_t persistent_plan<C, T>(int64_t, int64_t, PersistentPlan*);        \
  template cudaError_t persistent_forward<C, T>(const PersistentParams<T>&,             \
                                                const PersistentPlan&, cudaStream_t);
#define GATEDRNN_INSTANTIATE_CELL(C)    \
  GATEDRNN_INSTANTIATE(C, float)        \
  GATEDRNN_INSTANTIATE(C, double)       \
  GATEDRNN_INSTANTIATE(C, __half)       \
  GATEDRNN_INSTANTIATE(C, __nv_bfloat16)
GATEDRNN_INSTANTIATE_CELL(Cell::kLstm)
GATEDRNN_INSTANTIATE_CELL(Cell::kGru)
GATEDRNN_INSTANTIATE_CELL(Cell::kRnn)
#undef GATEDRNN_INSTANTIATE_CELL
#undef GATEDRNN_INSTANTIATE

}  // namespace kernels
}  // namespace gatedrnn
