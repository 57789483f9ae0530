// The gatedrnn._C Python module. Importing it runs the static initializers that register
// the ops (registration.cpp, cpu/, cuda/); its only functions manage the CPU block cache
// (cpu/block_cache.h).
#include <Python.h>

#include "cpu/block_cache.h"

namespace {

PyObject* empty_cpu_cache(PyObject*, PyObject*) {
  gatedrnn::empty_cpu_cache();
  Py_RETURN_NONE;
}

PyObject* cpu_cache_bytes(PyObject*, PyObject*) {
  return PyLong_FromLongLong(gatedrnn::cpu_cache_bytes());
}

PyMethodDef methods[] = {
    {"empty_cpu_cache", empty_cpu_cache, METH_NOARGS,
     "Frees the blocks the CPU block cache holds."},
    {"cpu_cache_bytes", cpu_cache_bytes, METH_NOARGS,
     "Bytes of freed blocks the CPU block cache holds."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module);
}
