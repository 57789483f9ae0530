// The gatedrnn._C Python module. Importing it runs the static initializers that register
// the ops (registration.cpp, cpu/, cuda/); its only functions manage the CPU block cache
// (cpu/block_cache.h) and say which build of the CPU micro-kernels runs (cpu/capability.h).
#include <Python.h>

#include <exception>

#include "cpu/block_cache.h"
#include "cpu/capability.h"

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

PyMethodDef methods[] = {
    {"empty_cpu_cache", empty_cpu_cache, METH_NOARGS,
     "Frees the blocks the CPU block cache holds."},
    {"cpu_cache_bytes", cpu_cache_bytes, METH_NOARGS,
     "Bytes of freed blocks the CPU block cache holds."},
    {"cpu_capability", cpu_capability, METH_NOARGS,
     "The build of the CPU micro-kernels in use: 'avx512', 'avx2' or 'default'."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module);
}
