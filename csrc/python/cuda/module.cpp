// The Python module fastmem._cuda: the CUDA launchers of each system (bind_<system>.cpp, each
// registered by itself; today the memory's) and whether a device is usable. Failed CUDA calls raise fastmem.CudaError.
#include <pybind11/pybind11.h>

#include <fastmem/cuda/launchers.hpp>
#include <string>

#include "../errors.hpp"
#include "../systems.hpp"

namespace py = pybind11;

namespace {

py::tuple device_count() {
  std::string why;
  const int n = fastmem::cuda::device_count(why);
  return py::make_tuple(n, why);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastmem CUDA kernels (device pointers; use through fastmem.backends)";
  fastmem::binding::register_error_translators();
  m.def("device_count", &device_count);
  fastmem::binding::bind_systems(m);
}
