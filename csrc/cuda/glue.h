#pragma once
// Shared by the CUDA glue of every cell (csrc/cuda/<cell>.cpp): tensors ->
// raw pointers for the torch-free kernels in csrc/kernels/, the choice of the
// persistent kernel, the packed schedule on the device.
//
// The glue is host C++ (compiled by the host compiler, not nvcc). Per op it
// checks the arguments with csrc/common/sequence.h (batch_sizes stays on the
// CPU, as in torch's PackedSequence, so the time loop is driven from the host
// without any device-to-host copy), sets the device guard, takes the current
// stream, allocates every buffer before the time loop, and inside the loop
// only launches: at::mm_out / at::addmm_out on narrowed views of those
// buffers (cuBLAS, no allocation) and the pointwise kernels. No host sync.
//
// Autocast: registered in Python (python/gatedrnn/ops/_common.py, register_autocast): under
// torch.autocast("cuda") the forward ops get every floating-point argument but float64 in
// float16, whatever the autocast dtype, as torch.nn's cuDNN RNNs do; the saved tensors are
// then in that dtype and the backward ops need no autocast of their own. fp16/bf16 compute the
// pointwise math in fp32 and keep the LSTM cell state (and dL/dc) in fp32 between steps;
// the GEMMs are cuBLAS's fp16/bf16 GEMMs with fp32 accumulation, and the weight gradients
// (sums over every row of the sequence) are written in fp32 and rounded once.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/version.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "../common/sequence.h"
#include "../kernels/persistent.h"

namespace gatedrnn {
namespace cuda {

// at::Half / at::BFloat16 have the layout of __half / __nv_bfloat16.
template <typename scalar_t>
struct KernelType {
  using type = scalar_t;
};
template <>
struct KernelType<at::Half> {
  using type = __half;
};
template <>
struct KernelType<at::BFloat16> {
  using type = __nv_bfloat16;
};

// Data pointer as the kernels' element type; null for an undefined tensor.
template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

// Reduction over the rows (the bias gradients).
constexpr int64_t kDim0[] = {0};

inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : at::Tensor();
}

// dtype of the state kept in the kernels' math type (acc_t): double for
// double, float otherwise.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// A fresh contiguous copy of t in dtype (never aliases t: outputs of the ops
// must not alias their inputs).
inline at::Tensor fresh_copy(const at::Tensor& t, at::ScalarType dtype) {
  at::Tensor out = at::empty(t.sizes(), t.options().dtype(dtype));
  out.copy_(t);
  return out;
}

// The result in the dtype of the op: the state itself when it already is.
inline at::Tensor as_dtype(const at::Tensor& state, at::ScalarType dtype) {
  return state.scalar_type() == dtype ? state : state.to(dtype);
}

// out = a @ b where out is in the math dtype (acc_dtype) and a, b in the op's
// dtype. For float/double a plain GEMM. For the half types cuBLAS accumulates
// in fp32 and writes fp32 (mm.dtype_out, torch >= 2.8), so the pointwise
// kernels see the GEMM result unrounded, as cuDNN's fp32 math mode does.
// No allocation on that path; the fallback (older torch, or tensors not on
// CUDA) goes through a temporary.
inline void mm_acc_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (out.scalar_type() == a.scalar_type()) {
    at::mm_out(out, a, b);
    return;
  }
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
  if (out.is_cuda()) {
    at::mm_out(out, a, b, out.scalar_type());
    return;
  }
#endif
  out.copy_(at::mm(a, b));
}

// a @ b for a weight gradient, whose sums run over every row of the sequence (6,400 at
// (T, N) = (100, 64)): for the half types accumulated and written in fp32 by cuBLAS, then
// rounded once, as cuDNN's are (an fp16 output lets cuBLAS reduce split-k partial sums in
// fp16); for float/double a plain GEMM.
inline at::Tensor weight_grad(const at::Tensor& a, const at::Tensor& b) {
  const at::ScalarType dtype = a.scalar_type();
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options().dtype(acc_dtype(dtype)));
  mm_acc_out(out, a, b);
  return as_dtype(out, dtype);
}

// The hoisted input projection x @ w_ih^T for all rows, in the math dtype.
// For float/double it is written straight into `into` (the first G*H columns
// of the workspace, or the output for the RNN) and the kernels read it from
// there; for the half types it gets its own fp32 buffer [R, G*H].
struct InputGates {
  at::Tensor gates;  // [R, >= G*H] in acc_dtype
  int64_t ld = 0;    // its row stride
};

inline InputGates input_gates(const at::Tensor& x, const at::Tensor& w_ih, at::Tensor& into) {
  const int64_t GH = w_ih.size(0);
  InputGates g;
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  if (acc == x.scalar_type()) {
    g.gates = into.narrow(1, 0, GH);
    at::mm_out(g.gates, x, w_ih.t());
    g.ld = into.size(1);
  } else {
    g.gates = at::empty({x.size(0), GH}, x.options().dtype(acc));
    mm_acc_out(g.gates, x, w_ih.t());
    g.ld = GH;
  }
  return g;
}

inline void check_on_cuda(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.is_cuda(), op, ": expected input on a CUDA device, got ", input.device());
}

// The step processed just before step k (in processing order) and how many of
// step k's rows continue a sequence from it; the others start from the
// initial state. Same rule as previous_states() on the CPU.
struct PrevStep {
  int64_t offset = 0;    // first row of the previous step (valid when from_seq > 0)
  int64_t from_seq = 0;  // rows of step k that continue from it
};

inline PrevStep prev_step(const Schedule& s, int64_t k) {
  PrevStep p;
  if (k == 0) return p;
  const int64_t tp = s.time_at(k - 1);
  p.offset = s.offsets[tp];
  p.from_seq = std::min(s.sizes[s.time_at(k)], s.sizes[tp]);
  return p;
}

// ---------------------------------------------------------------------------
// Persistent kernel selection.
//
// GATEDRNN_PERSISTENT (read at every call):
//   unset / "auto"  use the persistent forward kernel whenever it can run
//                   (batch <= 16, no LSTM projection, weights fit in shared memory);
//   "0" / "off"     never;
//   "1" / "force"   always, and raise a RuntimeError saying why when it cannot run
//                   (used by the tests to exercise both paths).
// The persistent kernel writes the same workspace as the per-step path, so the
// backward (always the per-step path) works after either.
enum class PersistentMode { kAuto, kOff, kForce };

inline PersistentMode persistent_mode() {
  const char* v = std::getenv("GATEDRNN_PERSISTENT");
  if (v == nullptr || *v == '\0') return PersistentMode::kAuto;
  const std::string s(v);
  if (s == "0" || s == "off" || s == "false" || s == "no") return PersistentMode::kOff;
  if (s == "1" || s == "on" || s == "force" || s == "true" || s == "yes")
    return PersistentMode::kForce;
  TORCH_CHECK_VALUE(s == "auto", "GATEDRNN_PERSISTENT must be auto, 0 or 1, got '", s, "'");
  return PersistentMode::kAuto;
}

// plan_fn(batch, hidden, &plan) is <cell>_persistent_plan<T>. `blocker` is a
// reason the op cannot use the kernel regardless of size (e.g. a projection),
// or null. An empty sequence (T = 0 or N = 0) never takes it: there is nothing to
// run, and the per-step path's loop is empty.
template <typename PlanFn>
bool use_persistent(const char* op, const Schedule& s, int64_t hidden, const char* blocker,
                    PlanFn plan_fn, kernels::PersistentPlan* plan) {
  const PersistentMode mode = persistent_mode();
  if (mode == PersistentMode::kOff) return false;
  const char* why = blocker;
  if (why == nullptr && (s.steps() == 0 || s.batch == 0)) return false;
  if (why == nullptr) {
    C10_CUDA_CHECK(plan_fn(s.batch, hidden, plan));
    if (!plan->ok) why = plan->reason;
  }
  TORCH_CHECK(why == nullptr || mode != PersistentMode::kForce, op,
              ": GATEDRNN_PERSISTENT=1 but the persistent kernel cannot run: ", why);
  return why == nullptr;
}

// Whether the persistent kernel's launch ran, given what it returned. A plan says the
// kernel's blocks fit on the GPU as a whole, but a cooperative launch is refused when
// they cannot all be resident at that moment (kernels of another stream or process hold
// SMs; an MPS client gets a share of them): in auto mode the caller then runs the
// per-step path, which writes the same results. With GATEDRNN_PERSISTENT=1 a refusal
// raises, and any other error raises in every mode.
inline bool persistent_ran(const char* op, cudaError_t err) {
  if (err == cudaSuccess) return true;
  const bool refused = err == cudaErrorCooperativeLaunchTooLarge ||
                       err == cudaErrorLaunchOutOfResources || err == cudaErrorNotSupported;
  if (refused) (void)cudaGetLastError();  // a refused launch leaves no sticky error: clear it
  const bool forced = persistent_mode() == PersistentMode::kForce;
  TORCH_CHECK(refused && !forced, op, ": the persistent kernel's launch failed",
              forced ? " (GATEDRNN_PERSISTENT=1)" : "", ": ", cudaGetErrorString(err));
  return false;
}

// The schedule on the device for the persistent kernel: [2, T] int64, row 0
// the live rows of each time index, row 1 its first row. Undefined for padded
// input (the kernel derives both). Copied from pinned memory without a host
// sync; the caching host allocator keeps the pinned block alive until the copy
// has run.
inline at::Tensor device_schedule(const Schedule& s, bool packed, const at::Tensor& like) {
  if (!packed) return at::Tensor();
  const int64_t T = s.steps();
  at::Tensor host = at::empty({2, T}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.data_ptr<int64_t>();
  std::memcpy(h, s.sizes.data(), sizeof(int64_t) * T);
  std::memcpy(h + T, s.offsets.data(), sizeof(int64_t) * T);
  return host.to(like.device(), at::kLong, /*non_blocking=*/true);
}

inline bool is_packed(const std::optional<at::Tensor>& batch_sizes) {
  return batch_sizes.has_value() && batch_sizes->defined();
}

}  // namespace cuda
}  // namespace gatedrnn
