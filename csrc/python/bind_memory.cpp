// Bindings of the associative memory's kernels and trainers (kernels/*.hpp, train.hpp,
// train_projected.hpp, train_many.hpp, train_models.hpp): convert, release the GIL, dispatch, call.
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

void py_softmax_xent_grad(py::array q, py::array u, py::array y, py::array w, py::array h, py::array lse,
                          py::array zy, py::array zother, index_t chunk) {
  dispatch(q, [&](auto tag) {
    using T = decltype(tag);
    const index_t b = q.shape(0);
    SoftmaxXentGradParams<T> p{cmatrix<T>(q, "Q"), cmatrix<T>(u, "U"), cvec<std::int64_t>(y, b, "y"),
                               cvec<T>(w, b, "w"), matrix<T>(h, "H"), vec<T>(lse, b, "lse"),
                               vec<T>(zy, b, "zy"), vec<T>(zother, b, "zother"), chunk};
    SoftmaxXentWorkspace<T> ws;
    py::gil_scoped_release nogil;
    softmax_xent_grad(p, ws);
  });
}

void py_sgd_rank_update(py::array W, py::array Eb, py::array H, double alpha) {
  dispatch(W, [&](auto tag) {
    using T = decltype(tag);
    auto Wv = matrix<T>(W, "W");
    auto Ev = cmatrix<T>(Eb, "Eb");
    auto Hv = cmatrix<T>(H, "H");
    FASTMEM_CHECK_ARG(Ev.rows == Hv.rows && Ev.cols == Wv.rows && Hv.cols == Wv.cols,
            "sgd_rank_update needs Eb (b x d), H (b x d), W (d x d)");
    py::gil_scoped_release nogil;
    sgd_rank_update(Wv, Ev, Hv, static_cast<T>(alpha));
  });
}

void py_sample_tokens(py::array cdf, std::uint64_t seed, index_t start_step, py::array out) {
  const index_t n = cdf.shape(0);
  const double* c = cvec<double>(cdf, n, "cdf");
  auto o = matrix<std::int64_t>(out, "out");
  py::gil_scoped_release nogil;
  sample_tokens(c, n, seed, start_step, o);
}

void py_normal_fill(std::uint64_t seed, double scale, py::array out) {
  FASTMEM_CHECK_ARG(out.flags() & py::array::c_style, "out must be C-contiguous");
  dispatch(out, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out.mutable_data());
    const index_t n = out.size();
    py::gil_scoped_release nogil;
    normal_fill(o, n, seed, 0, scale);
  });
}

py::tuple py_population_metrics(py::array E, py::object oc, py::object os, py::array U, py::array W, py::array p,
                                py::array y, bool ln, index_t chunk, py::object margins, py::object grad) {
  return dispatch(E, [&](auto tag) {
    using T = decltype(tag);
    auto pr = problem<T>(E, oc, os, U, p, y, ln, chunk);
    auto Wv = cmatrix<T>(W, "W");
    T* mg = opt_ptr<T>(margins, pr.N(), "margins");
    MatrixView<T> gv;
    if (!grad.is_none()) {
      py::array g = grad.cast<py::array>();
      gv = matrix<T>(g, "grad");
    }
    PassWorkspace<T> ws;
    PopulationMetrics m;
    {
      py::gil_scoped_release nogil;
      m = population_metrics(pr, Wv, mg, gv, ws);
    }
    return py::make_tuple(m.loss, m.accuracy);
  });
}

double py_sharpness(py::array E, py::object oc, py::object os, py::array U, py::array W, py::array p, py::array y,
                    index_t chunk, index_t iters, double tol, std::uint64_t seed) {
  return dispatch(E, [&](auto tag) {
    using T = decltype(tag);
    auto pr = problem<T>(E, oc, os, U, p, y, false, chunk);
    auto Wv = cmatrix<T>(W, "W");
    HvpWorkspace<T> ws;
    py::gil_scoped_release nogil;
    return sharpness(pr, Wv, iters, tol, seed, ws);
  });
}

py::tuple py_train(py::array E, py::object oc, py::object os, py::array U, py::array W, py::array p, py::array y,
                   py::object cdf, py::object tokens, py::object opt, py::object tpd, py::object rec, py::object m,
                   py::object v, index_t t0) {
  return dispatch(E, [&](auto tag) {
    using T = decltype(tag);
    const TrainParams tp = train_params(tpd);
    auto pr = problem<T>(E, oc, os, U, p, y, tp.layernorm, tp.chunk);
    auto Wv = matrix<T>(W, "W");
    const index_t d = pr.d();
    const double* cdfp = opt_ptr<double, false>(cdf, pr.N(), "cdf");
    const std::int64_t* tok = opt_ptr<std::int64_t, false>(tokens, tp.steps, "tokens");
    OptimizerParams op = optimizer_params(opt);
    OptimizerState<T> st;
    st.t = t0;
    if (T* mp = opt_ptr<T>(m, d, "m")) st.m = MatrixView<T>(mp, d, d);
    if (T* vp = opt_ptr<T>(v, d, "v")) st.v = MatrixView<T>(vp, d, d);
    FASTMEM_CHECK_ARG(op.kind != OptimizerKind::Adam || (!st.m.empty() && !st.v.empty()), "Adam needs m and v");
    FASTMEM_CHECK_ARG(op.kind != OptimizerKind::SGD || op.momentum == 0.0 || !st.m.empty(), "momentum needs m");
    const TrainRecord<T> r = train_record<T>(rec);
    const TrainResult res = interruptible([&] { return train(pr, Wv, cdfp, tok, op, st, tp, r); });
    return py::make_tuple(static_cast<int>(res.status), res.steps_done, res.records, st.t);
  });
}

py::tuple py_train_dual(py::array E, py::object oc, py::object os, py::array U, py::array W0, py::array p,
                        py::array y, py::object cdf, py::object tokens, py::object opt, py::object tpd, py::object rec,
                        py::array Z, py::array A, py::object mA, py::object mZ, double c, bool fresh) {
  return dispatch(E, [&](auto tag) {
    using T = decltype(tag);
    const TrainParams tp = train_params(tpd);
    auto pr = problem<T>(E, oc, os, U, p, y, tp.layernorm, tp.chunk);
    const double* cdfp = opt_ptr<double, false>(cdf, pr.N(), "cdf");
    const std::int64_t* tok = opt_ptr<std::int64_t, false>(tokens, tp.steps, "tokens");
    const OptimizerParams op = optimizer_params(opt);
    const TrainRecord<T> r = train_record<T>(rec);
    auto W0v = cmatrix<T>(W0, "W0");
    DualState<T> st;
    st.Z = matrix<T>(Z, "Z");
    st.A = matrix<T>(A, "A");
    if (!mA.is_none()) {
      py::array ma = mA.cast<py::array>(), mz = mZ.cast<py::array>();
      st.mA = matrix<T>(ma, "mA");
      st.mZ = matrix<T>(mz, "mZ");
    }
    st.c = c;
    st.fresh = fresh;
    const TrainResult res = interruptible([&] { return train_dual(pr, W0v, st, cdfp, tok, op, tp, r); },
                                          [&] { return py::make_tuple(st.c); });
    return py::make_tuple(static_cast<int>(res.status), res.steps_done, res.records, st.c);
  });
}

py::tuple py_train_projected(py::array E, py::array U, py::array V, py::array p, py::array y, py::object cdf,
                            py::object tokens, py::object opt, py::object tpd, py::object rec) {
  return dispatch(E, [&](auto tag) {
    using T = decltype(tag);
    const TrainParams tp = train_params(tpd);
    auto pr = problem<T>(E, py::none(), py::none(), U, p, y, tp.layernorm, tp.chunk);
    const double* cdfp = opt_ptr<double, false>(cdf, pr.N(), "cdf");
    const std::int64_t* tok = opt_ptr<std::int64_t, false>(tokens, tp.steps, "tokens");
    const OptimizerParams op = optimizer_params(opt);
    const TrainRecord<T> r = train_record<T>(rec);
    auto Vv = matrix<T>(V, "V");
    const TrainResult res = interruptible([&] { return train_projected(pr, Vv, cdfp, tok, op, tp, r); });
    return py::make_tuple(static_cast<int>(res.status), res.steps_done, res.records);
  });
}

double py_sgd_step(py::array W, py::array E, py::object oc, py::object os, py::array U, py::array x, py::array yb,
                   double lr, bool ln, py::array out) {
  return dispatch(E, [&](auto tag) {
    using T = decltype(tag);
    auto pr = problem<T>(E, oc, os, U, py::none(), py::none(), ln, 0);
    const index_t b = x.shape(0);
    // the tokens and targets are range-checked by fastmem.sgd_step (memory/step.py), as
    // sgd_step's other callers do (problem.hpp)
    const std::int64_t* xp = cvec<std::int64_t>(x, b, "x");
    const std::int64_t* yp = cvec<std::int64_t>(yb, b, "y");
    auto Wv = cmatrix<T>(W, "W");
    auto Ov = matrix<T>(out, "out");
    PassWorkspace<T> ws;
    py::gil_scoped_release nogil;
    return sgd_step(pr, Wv, xp, yp, b, lr, Ov, ws);
  });
}

void py_train_many(py::array E, py::array U, py::array W, py::array p, py::array y, py::array lr, index_t steps,
                   py::array loss, py::array accuracy, py::array status) {
  dispatch(E, [&](auto tag) {
    using T = decltype(tag);
    FASTMEM_CHECK_ARG(E.ndim() == 3 && U.ndim() == 3, "E and U must be 3-D (runs, tokens, d)");
    TrainManyParams<T> P;
    P.R = E.shape(0), P.N = E.shape(1), P.d = E.shape(2), P.M = U.shape(1), P.steps = steps;
    P.E = dense<T>(E, {P.R, P.N, P.d}, "E");
    P.U = dense<T>(U, {P.R, P.M, P.d}, "U");
    P.W = dense<T, true>(W, {P.R, P.d, P.d}, "W");
    P.p = dense<double>(p, {P.R, P.N}, "p");
    P.y = dense<std::int64_t>(y, {P.R, P.N}, "y");
    P.lr = dense<double>(lr, {P.R}, "lr");
    P.loss = dense<T, true>(loss, {P.R}, "loss");
    P.accuracy = dense<T, true>(accuracy, {P.R}, "accuracy");
    P.status = dense<std::int8_t, true>(status, {P.R}, "status");
    FASTMEM_CHECK_ARG(steps >= 0, "steps must be >= 0");  // y is range-checked by fm.train_many
    interruptible([&] {
      train_many(P);
      TrainResult res;
      for (index_t r = 0; r < P.R; ++r)
        if (P.status[r] == static_cast<std::int8_t>(Status::Interrupted)) res.status = Status::Interrupted;
      return res;
    });
  });
}

void py_dual_rebuild_W(py::array E, py::object oc, py::object os, py::object U, py::array W0, py::array A, double c,
                       py::array W_out) {
  dispatch(E, [&](auto tag) {
    using T = decltype(tag);
    const InputEmbedding<T> emb = input_embedding<T>(E, oc, os);
    MatrixView<const T> Uv;  // None: A holds read-out coefficients (N x d)
    if (!U.is_none()) Uv = cmatrix<T>(U.cast<py::array>(), "U");
    auto W0v = cmatrix<T>(W0, "W0");
    auto Av = cmatrix<T>(A, "A");
    auto Wv = matrix<T>(W_out, "W_out");
    FASTMEM_CHECK_ARG(Av.rows == emb.E.rows && Av.cols == (U.is_none() ? emb.E.cols : Uv.rows) &&
                Wv.rows == emb.E.cols && Wv.cols == emb.E.cols && W0v.rows == Wv.rows && W0v.cols == Wv.cols,
            "dual_rebuild_W needs A (N x M, or N x d without U), W0 and W_out (d x d)");
    std::vector<T> au;
    py::gil_scoped_release nogil;
    dual_rebuild_W(emb, Uv, W0v, c, Av, Wv, au);
  });
}

py::tuple py_train_model(int kind, py::array E, py::array U, py::object W, py::array p, py::array y, py::object cdf,
                         py::object tokens, py::object opt, py::object tpd, py::object rec) {
  return dispatch(E, [&](auto tag) {
    using T = decltype(tag);
    const TrainParams tp = train_params(tpd);
    ModelProblem<T> pr;
    FASTMEM_CHECK_ARG(kind == 1 || kind == 2, "kind must be 1 (learnable) or 2 (exponential)");
    pr.kind = static_cast<ModelKind>(kind);
    pr.E = matrix<T>(E, "E");
    pr.U = matrix<T>(U, "U");
    FASTMEM_CHECK_ARG(pr.E.stride == pr.E.cols && pr.U.stride == pr.U.cols, "E and U must be C-contiguous");
    if (!W.is_none()) {
      py::array w = W.cast<py::array>();
      pr.W = matrix<T>(w, "W");
      FASTMEM_CHECK_ARG(pr.W.stride == pr.W.cols, "W must be C-contiguous");
    }
    const index_t N = pr.E.rows;
    pr.p = cvec<double>(p, N, "p");
    pr.y = cvec<std::int64_t>(y, N, "y");
    pr.layernorm = tp.layernorm;
    const ModelOptimizer mo = model_optimizer(opt);
    const double* cdfp = opt_ptr<double, false>(cdf, N, "cdf");
    const std::int64_t* tok = opt_ptr<std::int64_t, false>(tokens, tp.steps, "tokens");
    const TrainRecord<T> r = train_record<T>(rec);
    const TrainResult res = interruptible([&] { return train_model(pr, mo, cdfp, tok, tp, r); });
    return py::make_tuple(static_cast<int>(res.status), res.steps_done, res.records);
  });
}

void bind_memory(py::module_& m) {
  m.def("softmax_xent_grad", &py_softmax_xent_grad);
  m.def("sgd_rank_update", &py_sgd_rank_update);
  m.def("sample_tokens", &py_sample_tokens);
  m.def("normal_fill", &py_normal_fill);
  m.def("population_metrics", &py_population_metrics);
  m.def("sharpness", &py_sharpness);
  m.def("train", &py_train);
  m.def("train_dual", &py_train_dual);
  m.def("train_projected", &py_train_projected);
  m.def("sgd_step", &py_sgd_step);
  m.def("train_many", &py_train_many);
  m.def("dual_rebuild_W", &py_dual_rebuild_W);
  m.def("train_model", &py_train_model);
}

}  // namespace

FASTMEM_BIND_SYSTEM(memory, bind_memory);
