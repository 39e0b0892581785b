// The Python module fastmem._core_<level>: one binding file per system (bind_<system>.cpp over
// the shared arrays.hpp, specs.hpp and errors.hpp, each registered by itself: systems.hpp), and
// the module's own functions (threads, info, the shared constants).
#include <pybind11/pybind11.h>

#include <fastmem/blas.hpp>
#include <fastmem/constants.hpp>
#include <fastmem/parallel.hpp>

#include "errors.hpp"
#include "systems.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(FASTMEM_USE_CBLAS) && defined(FASTMEM_OPENBLAS_THREADS)
extern "C" void FASTMEM_CBLAS(openblas_set_num_threads)(int);
extern "C" int FASTMEM_CBLAS(openblas_get_num_threads)();
#endif

namespace py = pybind11;
using namespace fastmem;

// One module per CPU level (CMakeLists.txt: _core_baseline, _core_avx2, ...); fastmem/_core.py
// loads the best one this CPU runs.
#ifndef FASTMEM_MODULE_NAME
#define FASTMEM_MODULE_NAME _core_baseline
#endif
#ifndef FASTMEM_CPU_LEVEL
#define FASTMEM_CPU_LEVEL "baseline"
#endif

namespace {

void set_threads(int n) {
  FASTMEM_CHECK_ARG(n >= 1, "n must be >= 1");
  fastmem::set_num_threads(n);
}

// The threads a large parallel region of the core actually gets (tests: fastmem's
// setting holds whatever another library did to OpenMP's).
int parallel_team_size() {
  int team = 1;
  parallel_blocks(1 << 20, threads_for(1 << 20, kParallelWork), [&](int t, index_t, index_t) {
#ifdef _OPENMP
    if (t == 0) team = omp_get_num_threads();
#endif
  });
  return team;
}

// The shared constants (constants.hpp), for the test that fastmem/specs.py holds the same.
py::dict constants() {
  py::dict d;
  d["layernorm_eps"] = kLayerNormEps;
  d["sharpness_tol"] = kSharpnessTol;
  return d;
}

py::dict info() {
  py::dict d;
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  d["blas"] = blas::name();
#ifdef FASTMEM_BLAS_NAME
  d["blas"] = FASTMEM_BLAS_NAME;
#endif
  d["threads"] = fastmem::num_threads();
#if defined(FASTMEM_USE_CBLAS) && defined(FASTMEM_OPENBLAS_THREADS)
  d["blas_threads"] = FASTMEM_CBLAS(openblas_get_num_threads)();
#endif
  d["compiler"] = __VERSION__;
  d["cpu_level"] = FASTMEM_CPU_LEVEL;
#ifdef FASTMEM_CXX_FLAGS
  d["cxx_flags"] = FASTMEM_CXX_FLAGS;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(FASTMEM_MODULE_NAME, m) {
  m.doc() = "fastmem compiled kernels (C++17 core), built for CPU level " FASTMEM_CPU_LEVEL;
  binding::register_error_translators();
#if defined(FASTMEM_USE_CBLAS) && defined(FASTMEM_OPENBLAS_THREADS)
  // The core runs one BLAS call per OpenMP thread (parallel.hpp).
  FASTMEM_CBLAS(openblas_set_num_threads)(1);
#endif
  binding::bind_systems(m);
  m.def("info", &info);
  m.def("constants", &constants);
  m.def("get_num_threads", [] { return fastmem::num_threads(); });
  m.def("set_num_threads", &set_threads);
  m.def("parallel_team_size", &parallel_team_size);
}
