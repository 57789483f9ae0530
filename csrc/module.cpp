// The gatedrnn._C Python module. Importing it runs the static initializers that register
// the ops (registration.cpp, cpu/, cuda/); its only functions manage the CPU block cache
// (cpu/block_cache.h), say which build of the CPU micro-kernels runs (cpu/capability.h) and
// measure the FMA peak the benchmark suite compares with (cpu/isa/fma_peak.h).
#include <Python.h>

#include <exception>
#include <string>

#include "cpu/block_cache.h"
#include "cpu/capability.h"
#include "cpu/isa/gemm_bf16.h"
#include "cpu/isa/fma_peak.h"

namespace {

PyObject* empty_cpu_cache(PyObject*, PyObject*) {
  gatedrnn::empty_cpu_cache();
  Py_RETURN_NONE;
}

PyObject* cpu_cache_bytes(PyObject*, PyObject*) {
  return PyLong_FromLongLong(gatedrnn::cpu_cache_bytes());
}

PyObject* cpu_capability(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(gatedrnn::cpu_capability_name(gatedrnn::cpu_capability()));
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

PyObject* cpu_bf16_kernel(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(gatedrnn::bf16_kernel_name(gatedrnn::bf16_kernel()));
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

PyObject* fma_peak_gflops(PyObject*, PyObject* args) {
  int threads = 1, float64 = 0;
  double seconds = 0.2;
  int bf16 = 0;
  if (!PyArg_ParseTuple(args, "i|pdp", &threads, &float64, &seconds, &bf16)) return nullptr;
  double result = 0;
  std::string error;
  // Without the GIL while it runs (seconds); nothing may leave the block by an exception.
  Py_BEGIN_ALLOW_THREADS
  try {
    result = bf16 ? gatedrnn::bf16_peak_gflops(threads, seconds)
                  : gatedrnn::fma_peak_gflops(threads, float64 != 0, seconds);
  } catch (const std::exception& e) {
    error = e.what();
  }
  Py_END_ALLOW_THREADS
  if (!error.empty()) {
    PyErr_SetString(PyExc_RuntimeError, error.c_str());
    return nullptr;
  }
  return PyFloat_FromDouble(result);
}

PyMethodDef methods[] = {
    {"empty_cpu_cache", empty_cpu_cache, METH_NOARGS,
     "Frees the blocks the CPU block cache holds."},
    {"cpu_cache_bytes", cpu_cache_bytes, METH_NOARGS,
     "Bytes of freed blocks the CPU block cache holds."},
    {"cpu_capability", cpu_capability, METH_NOARGS,
     "The build of the CPU micro-kernels in use: 'avx512', 'avx2' or 'default'."},
    {"cpu_bf16_kernel", cpu_bf16_kernel, METH_NOARGS,
     "The GEMM kernels of the bfloat16 CPU ops: 'amx', 'avx512_bf16' or 'none' (float32)."},
    {"fma_peak_gflops", fma_peak_gflops, METH_VARARGS,
     "fma_peak_gflops(threads, float64=False, seconds=0.2, bf16=False): GFLOP/s of a "
     "register-only FMA loop with the CPU micro-kernels' ISA, on that many threads at once; "
     "with bf16, of the bfloat16 kernels' instruction (0 without them)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module);
}
