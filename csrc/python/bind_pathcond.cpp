// Bindings of PathCond's solver (kernels/pathcond.hpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <fastmem/fastmem.hpp>

#include "arrays.hpp"
#include "errors.hpp"
#include "specs.hpp"
#include "systems.hpp"

namespace py = pybind11;
using namespace fastmem;
using namespace fastmem::binding;

namespace {

// groups: (n, 7) int64 rows {H, in_offset, in_row, bias_offset, out_offset, out_outer, out_inner}.
int py_pathcond_solve(py::array weights, py::array groups, py::array z, py::object objective, double tol,
                      std::int64_t max_sweeps, bool enorm) {
  FASTMEM_CHECK_ARG(weights.ndim() == 1 && weights.dtype().is(py::dtype::of<double>()) &&
              (weights.shape(0) <= 1 || weights.strides(0) == sizeof(double)),
          "weights must be a contiguous float64 vector");
  auto gv = cmatrix<std::int64_t>(groups, "groups");
  FASTMEM_CHECK_ARG(gv.cols == 7 && gv.stride == 7, "groups must be a contiguous (n, 7) int64 array");
  static_assert(sizeof(RescaleGroup) == 7 * sizeof(std::int64_t), "RescaleGroup is 7 int64");
  PathCondParams p;
  p.weights = static_cast<const double*>(weights.data());
  p.P = weights.shape(0);
  p.groups = reinterpret_cast<const RescaleGroup*>(gv.ptr);
  p.n_groups = gv.rows;
  index_t H = 0;
  for (index_t k = 0; k < gv.rows; ++k) H += gv.ptr[k * 7];
  p.z = vec<double>(z, H, "z");
  p.tol = tol;
  p.max_sweeps = max_sweeps;
  p.enorm = enorm;
  p.objective = opt_ptr<double>(objective, max_sweeps + 1, "objective");
  PathCondWorkspace ws;
  index_t sweeps = 0;
  interruptible([&] {  // Ctrl-C polled between groups: raised here, nothing of the model changed
    sweeps = pathcond_solve(p, ws);
    TrainResult res;
    res.status = ws.interrupted ? Status::Interrupted : Status::Ok;
    res.steps_done = sweeps;
    return res;
  });
  return static_cast<int>(sweeps);
}

void bind_pathcond(py::module_& m) { m.def("pathcond_solve", &py_pathcond_solve); }

}  // namespace

FASTMEM_BIND_SYSTEM(pathcond, bind_pathcond);
