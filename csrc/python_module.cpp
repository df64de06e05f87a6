// The Python module normext._C. Importing it loads this library, whose static initializers
// register the operators with the dispatcher; it exposes nothing else (no pybind11), so the only
// file that needs Python.h is this one and the CMake build for LibTorch users leaves it out.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
