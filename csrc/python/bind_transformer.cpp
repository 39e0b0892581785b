// Bindings of the induction-head transformer (kernels/induction_heads.hpp). tables, spec,
// weights, rows and grads are the NamedTuples of fastmem/transformer/, read once by field name.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <fastmem/fastmem.hpp>

#include "arrays.hpp"
#include "errors.hpp"
#include "systems.hpp"

namespace py = pybind11;
using namespace fastmem;
using namespace fastmem::binding;

namespace {

void py_ihead_sample(py::object tables, py::object spec, py::array z, py::array outs) {
  using namespace fastmem::transformer;
  auto zv = matrix<std::int64_t>(z, "z");
  auto ov = matrix<std::int64_t>(outs, "outs");
  FASTMEM_CHECK_ARG(zv.rows == ov.rows && zv.cols == ov.cols + 1 && ov.cols >= 1, "z must be B x (T+1), outs B x T");
  BigramTables tb;
  py::array pi = field_array(tables, "pi"), pt = field_array(tables, "pi_thresh"), pa = field_array(tables, "pi_alias");
  tb.V = pi.shape(0);
  const index_t V = tb.V;
  py::array ct = field_array(tables, "cond_thresh"), ca = field_array(tables, "cond_alias");
  tb.pi = cvec<double>(pi, V, "tables.pi");
  tb.pi_thresh = cvec<std::uint64_t>(pt, V, "tables.pi_thresh");
  tb.pi_alias = cvec<std::int64_t>(pa, V, "tables.pi_alias");
  tb.cond_thresh = dense<std::uint64_t>(ct, {V, V}, "tables.cond_thresh");
  tb.cond_alias = dense<std::int64_t>(ca, {V, V}, "tables.cond_alias");
  SampleSpec sp;
  sp.seed = spec.attr("seed").cast<std::uint64_t>();
  sp.step = spec.attr("step").cast<index_t>();
  sp.k = spec.attr("k").cast<index_t>();
  sp.random_triggers = spec.attr("random_triggers").cast<bool>();
  sp.bigram_outputs = spec.attr("bigram_outputs").cast<bool>();
  py::array trig = field_array(spec, "triggers");
  FASTMEM_CHECK_ARG(sp.k >= 0 && sp.k <= V, "spec.k must be in [0, V]");
  sp.triggers = cvec<std::int64_t>(trig, sp.random_triggers ? trig.shape(0) : sp.k, "spec.triggers");
  // the tables and triggers are checked once, by fm.transformer.Bigrams and InductionHeads
  py::gil_scoped_release nogil;
  sample_batch(tb, sp, zv, ov);
}

template <class T>
transformer::Weights<T> weights_of(const py::object& w, index_t n_pos) {
  transformer::Weights<T> out{cmatrix<T>(field_array(w, "wE"), "wE"),   cmatrix<T>(field_array(w, "P"), "P"),
                              cmatrix<T>(field_array(w, "WK1"), "WK1"), cmatrix<T>(field_array(w, "WV1"), "WV1"),
                              cmatrix<T>(field_array(w, "WO1"), "WO1"), cmatrix<T>(field_array(w, "WK2"), "WK2"),
                              cmatrix<T>(field_array(w, "WV2"), "WV2"), cmatrix<T>(field_array(w, "WO2"), "WO2"),
                              cmatrix<T>(field_array(w, "WU"), "WU")};
  const index_t V = out.wE.rows, d = out.wE.cols;
  FASTMEM_CHECK_ARG(out.P.rows >= n_pos && out.P.cols == d, "P must be (>= T) x d");
  out.P.rows = n_pos;
  for (auto* m : {&out.WK1, &out.WV1, &out.WO1, &out.WK2, &out.WV2, &out.WO2})
    FASTMEM_CHECK_ARG(m->rows == d && m->cols == d, "the attention matrices must be d x d");
  FASTMEM_CHECK_ARG(out.WU.rows == V && out.WU.cols == d, "WU must be V x d");
  return out;
}

// The rows' CSR as the core reads it; the positions are checked against T here (they index
// the workspace), their order and the tokens once, in Python.
transformer::Rows rows_of(const py::object& rows, index_t B, index_t T, py::array& ptr, py::array& idx) {
  ptr = field_array(rows, "ptr"), idx = field_array(rows, "idx");
  transformer::Rows r{cvec<std::int64_t>(ptr, B + 1, "rows.ptr"), nullptr};
  FASTMEM_CHECK_ARG(r.ptr[0] == 0, "rows.ptr must start at 0");
  r.idx = cvec<std::int64_t>(idx, r.ptr[B], "rows.idx");
  for (index_t b = 0; b < B; ++b) {
    FASTMEM_CHECK_ARG(r.ptr[b + 1] >= r.ptr[b], "rows.ptr must not decrease");
    for (index_t i = r.ptr[b]; i < r.ptr[b + 1]; ++i)
      FASTMEM_CHECK_ARG(r.idx[i] >= (i > r.ptr[b] ? r.idx[i - 1] + 1 : 0) && r.idx[i] < T,
                        "rows.idx: ascending positions in [0, T) per sequence");
  }
  return r;
}

void py_ihead_rows_forward(py::object weights, py::array z, py::object rows, py::array Hr, py::array A2) {
  dispatch(Hr, [&](auto tag) {
    using T = decltype(tag);
    auto zv = cmatrix<std::int64_t>(z, "z");
    const auto w = weights_of<T>(weights, zv.cols - 1);
    py::array ptr, idx;
    const auto r = rows_of(rows, zv.rows, zv.cols - 1, ptr, idx);
    auto hv = matrix<T>(Hr, "Hr"), av = matrix<T>(A2, "A2");
    FASTMEM_CHECK_ARG(hv.rows == r.ptr[zv.rows] && av.rows == hv.rows && hv.cols == w.d() && av.cols == w.d(),
                      "Hr and A2 must be (rows) x d");
    py::gil_scoped_release nogil;
    transformer::rows_forward<T>(w, zv, r, hv, av);
  });
}

double py_ihead_loss_grads(py::object weights, py::array z, py::object rows, double weight, py::object grads) {
  py::array probe = field_array(weights, "wE");
  return dispatch(probe, [&](auto tag) {
    using T = decltype(tag);
    auto zv = cmatrix<std::int64_t>(z, "z");
    const auto w = weights_of<T>(weights, zv.cols - 1);
    py::array ptr, idx;
    const auto r = rows_of(rows, zv.rows, zv.cols - 1, ptr, idx);
    transformer::Grads<T> g;
    const index_t V = w.V(), d = w.d();
    g.wE = opt_matrix<T>(grads.attr("wE"), V, d, "grads.wE");
    g.WK1 = opt_matrix<T>(grads.attr("WK1"), d, d, "grads.WK1");
    g.WK2 = opt_matrix<T>(grads.attr("WK2"), d, d, "grads.WK2");
    g.WO2 = opt_matrix<T>(grads.attr("WO2"), d, d, "grads.WO2");
    g.WU = opt_matrix<T>(grads.attr("WU"), V, d, "grads.WU");
    py::gil_scoped_release nogil;
    return transformer::loss_and_grads<T>(w, zv, r, T(weight), g);
  });
}

void py_ihead_wo2_grads(py::array Hr, py::array A2, py::array WU, py::array y, py::array Ws, double weight,
                        py::array G, py::array loss) {
  dispatch(Hr, [&](auto tag) {
    using T = decltype(tag);
    auto hv = cmatrix<T>(Hr, "Hr"), av = cmatrix<T>(A2, "A2"), uv = cmatrix<T>(WU, "WU");
    const index_t n = hv.rows, d = hv.cols;
    FASTMEM_CHECK_ARG(av.rows == n && av.cols == d && uv.cols == d, "Hr and A2 must be n x d, WU V x d");
    FASTMEM_CHECK_ARG(Ws.ndim() == 3, "Ws must be R x d x d");
    const index_t R = Ws.shape(0);
    const T* w = dense<T>(Ws, {R, d, d}, "Ws");
    T* g = dense<T, true>(G, {R, d, d}, "G");
    double* l = vec<double>(loss, R, "loss");
    const std::int64_t* yv = cvec<std::int64_t>(y, n, "y");  // targets checked in Python
    py::gil_scoped_release nogil;
    transformer::wo2_grads<T>(hv, av, uv, yv, w, R, T(weight), g, l);
  });
}

void bind_transformer(py::module_& m) {
  m.def("ihead_wo2_grads", &py_ihead_wo2_grads);
  m.def("ihead_sample", &py_ihead_sample);
  m.def("ihead_rows_forward", &py_ihead_rows_forward);
  m.def("ihead_loss_grads", &py_ihead_loss_grads);
}

}  // namespace

FASTMEM_BIND_SYSTEM(transformer, bind_transformer);
