// Bindings of CMD's kernels (kernels/cmd.hpp).
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

void py_cmd_assign_fit(py::array theta, py::array refs, py::array mode, py::array a, py::array b, py::object corr) {
  dispatch(theta, [&](auto tag) {
    using T = decltype(tag);
    CmdFitParams<T> p;
    p.theta = cmatrix<T>(theta, "theta");
    p.refs = cmatrix<double>(refs, "refs");
    const index_t P = p.theta.cols;
    FASTMEM_CHECK_ARG(p.refs.rows == p.theta.rows, "refs must have a row per step of theta");
    p.mode = vec<std::int64_t>(mode, P, "mode");
    p.a = vec<double>(a, P, "a");
    p.b = vec<double>(b, P, "b");
    p.corr = opt_ptr<double>(corr, P, "corr");
    py::gil_scoped_release nogil;
    cmd_assign_fit(p);
  });
}

void py_cmd_online_update(py::array theta_t, py::array r_t, py::array mode, index_t n, py::array r_mean,
                          py::array r_m2, py::array theta_mean, py::array co) {
  dispatch(theta_t, [&](auto tag) {
    using T = decltype(tag);
    const index_t P = theta_t.shape(0), M = r_t.shape(0);
    const T* th = cvec<T>(theta_t, P, "theta_t");
    const double* r = cvec<double>(r_t, M, "r_t");
    // mode comes from cmd_assign_fit (values in [0, M)); checking it here would be a
    // second pass over P entries on every step
    const std::int64_t* md = cvec<std::int64_t>(mode, P, "mode");
    double* rm = vec<double>(r_mean, M, "r_mean");
    double* r2 = vec<double>(r_m2, M, "r_m2");
    double* tm = vec<double>(theta_mean, P, "theta_mean");
    double* c = vec<double>(co, P, "co");
    py::gil_scoped_release nogil;
    cmd_online_update(th, P, r, M, md, n, rm, r2, tm, c);
  });
}

void bind_cmd(py::module_& m) {
  m.def("cmd_assign_fit", &py_cmd_assign_fit);
  m.def("cmd_online_update", &py_cmd_online_update);
}

}  // namespace

FASTMEM_BIND_SYSTEM(cmd, bind_cmd);
