// Python bindings of the header-only core: convert arrays to views, release the
// GIL, dispatch on dtype, call. Validation with messages for users happens once
// in fastmem/_validate.py; the checks here only keep bad calls from reading
// out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <fastmem/fastmem.hpp>
#include <string>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(FASTMEM_USE_CBLAS) && defined(FASTMEM_OPENBLAS_THREADS)
extern "C" void FASTMEM_CBLAS(openblas_set_num_threads)(int);
extern "C" int FASTMEM_CBLAS(openblas_get_num_threads)();
#endif

namespace py = pybind11;
using namespace fastmem;

namespace {

// Argument errors (here and FASTMEM_CHECK_ARG in the core) reach Python as
// fastmem.InvalidArgumentError (the translator registered in the module init).
void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

// The StopProbe of the training loops (interrupt.hpp): the GIL for a moment, and Python's
// pending signals handled; a handler that raised (Ctrl-C: KeyboardInterrupt) stops the
// run, its exception left set for interruptible() to raise.
bool python_signal_pending(void*) {
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

// Runs a training loop without the GIL, Ctrl-C polled between steps. An interrupted run
// raises the exception of the signal handler, carrying (steps done, records written) as
// `fastmem_progress` so that the caller can keep what the run recorded.
template <class F>
TrainResult interruptible(F&& run) {
  TrainResult res;
  {
    py::gil_scoped_release nogil;
    ScopedStopProbe probe({&python_signal_pending, nullptr});
    res = run();
  }
  if (res.status == Status::Interrupted) {
    py::error_already_set err;  // fetches (and clears) what the handler raised
    try {
      err.value().attr("fastmem_progress") = py::make_tuple(res.steps_done, res.records);
    } catch (py::error_already_set&) {  // an exception object without attributes: raise it as it is
    }
    throw err;
  }
  return res;
}

// A 2-D array with unit column stride as a view. numpy gives a dimension of
// size 1 any stride, so those strides are not checked.
template <class T>
MatrixView<const T> view_2d(const py::array& a, const char* name) {
  require(a.ndim() == 2, std::string(name) + " must be 2-D");
  require(a.dtype().is(py::dtype::of<T>()), std::string(name) + " has the wrong dtype");
  const index_t rows = a.shape(0), cols = a.shape(1), es = sizeof(T);
  require((cols <= 1 || a.strides(1) == es) && (rows <= 1 || a.strides(0) % es == 0),
          std::string(name) + " must have contiguous rows");
  const index_t stride = rows <= 1 ? cols : a.strides(0) / es;
  return {static_cast<const T*>(a.data()), rows, cols, stride};
}

template <class T>
MatrixView<T> matrix(py::array& a, const char* name) {
  require(a.writeable(), std::string(name) + " must be writeable");
  const MatrixView<const T> v = view_2d<T>(a, name);
  return {static_cast<T*>(a.mutable_data()), v.rows, v.cols, v.stride};
}

template <class T>
MatrixView<const T> cmatrix(const py::array& a, const char* name) {
  return view_2d<T>(a, name);
}

template <class T>
T* vec(py::array& a, index_t n, const char* name) {
  require(a.ndim() == 1 && a.shape(0) == n, std::string(name) + " must have length " + std::to_string(n));
  require(a.dtype().is(py::dtype::of<T>()), std::string(name) + " has the wrong dtype");
  require(n <= 1 || a.strides(0) == sizeof(T), std::string(name) + " must be contiguous");
  return static_cast<T*>(a.mutable_data());
}

template <class T>
const T* cvec(const py::array& a, index_t n, const char* name) {
  require(a.ndim() == 1 && a.shape(0) == n, std::string(name) + " must have length " + std::to_string(n));
  require(a.dtype().is(py::dtype::of<T>()), std::string(name) + " has the wrong dtype");
  require(n <= 1 || a.strides(0) == sizeof(T), std::string(name) + " must be contiguous");
  return static_cast<const T*>(a.data());
}

// Optional C-contiguous array (None -> null) with leading dimension n; inputs
// (Writable = false) may be read-only.
template <class T, bool Writable = true>
auto opt_ptr(py::object o, index_t n, const char* name) {
  using P = std::conditional_t<Writable, T*, const T*>;
  if (o.is_none()) return P(nullptr);
  py::array a = o.cast<py::array>();
  require(a.ndim() >= 1 && a.shape(0) == n && a.dtype().is(py::dtype::of<T>()) &&
              (a.flags() & py::array::c_style),
          std::string(name) + " must be C-contiguous with leading dimension " + std::to_string(n));
  if constexpr (Writable) {
    require(a.writeable(), std::string(name) + " must be writeable");
    return static_cast<T*>(a.mutable_data());
  } else {
    return static_cast<const T*>(a.data());
  }
}

// Calls f(T{}) with T the floating type of `a`.
template <class F>
auto dispatch(const py::array& a, F&& f) {
  const bool f32 = a.dtype().is(py::dtype::of<float>());
  if (!f32 && !a.dtype().is(py::dtype::of<double>()))
    throw py::type_error("fastmem kernels take float32 or float64 arrays");
  return dtype_switch(f32 ? Dtype::Float32 : Dtype::Float64, f);
}

template <class T>
Problem<T> problem(py::array E, py::object oc, py::object os, py::array U, py::array p, py::array y, bool ln,
                   index_t chunk) {
  Problem<T> pr;
  pr.emb.E = cmatrix<T>(E, "E");
  const index_t N = pr.emb.E.rows;
  pr.emb.onehot_col = opt_ptr<std::int64_t, false>(oc, N, "onehot_col");
  pr.emb.onehot_scale = opt_ptr<T, false>(os, N, "onehot_scale");
  require(!pr.emb.onehot_col == !pr.emb.onehot_scale, "onehot_col and onehot_scale go together");
  pr.U = cmatrix<T>(U, "U");
  require(pr.U.cols == pr.emb.E.cols, "E and U must have the same number of columns");
  pr.p = cvec<double>(p, N, "p");
  pr.y = cvec<std::int64_t>(y, N, "y");
  pr.layernorm = ln;
  pr.chunk = chunk;
  return pr;
}

OptimizerParams optimizer_params(const py::object& o) {
  OptimizerParams op;
  op.kind = static_cast<OptimizerKind>(o.attr("kind").cast<int>());
  op.lr = o.attr("lr").cast<double>();
  op.momentum = o.attr("momentum").cast<double>();
  op.weight_decay = o.attr("weight_decay").cast<double>();
  op.beta1 = o.attr("beta1").cast<double>();
  op.beta2 = o.attr("beta2").cast<double>();
  op.eps = o.attr("eps").cast<double>();
  op.schedule = static_cast<ScheduleKind>(o.attr("schedule").cast<int>());
  op.schedule_steps = o.attr("schedule_steps").cast<index_t>();
  op.gamma = o.attr("gamma").cast<double>();
  op.min_lr = o.attr("min_lr").cast<double>();
  return op;
}

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
    require(Ev.rows == Hv.rows && Ev.cols == Wv.rows && Hv.cols == Wv.cols,
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

TrainParams train_params(const py::object& tpd) {
  TrainParams tp;
  tp.steps = tpd.attr("steps").cast<index_t>();
  tp.batch_size = tpd.attr("batch_size").cast<index_t>();
  tp.seed = tpd.attr("seed").cast<std::uint64_t>();
  tp.start_step = tpd.attr("start_step").cast<index_t>();
  tp.layernorm = tpd.attr("layernorm").cast<bool>();
  tp.chunk = tpd.attr("chunk").cast<index_t>();
  tp.power_iters = tpd.attr("power_iters").cast<index_t>();
  return tp;
}

template <class T>
TrainRecord<T> train_record(const py::object& rec) {
  py::array at = rec.attr("at").cast<py::array>();
  TrainRecord<T> r;
  r.count = at.shape(0);
  r.at = cvec<std::int64_t>(at, r.count, "record steps");
  r.loss = opt_ptr<T>(rec.attr("loss"), r.count, "record loss");
  r.accuracy = opt_ptr<T>(rec.attr("accuracy"), r.count, "record accuracy");
  r.margins = opt_ptr<T>(rec.attr("margins"), r.count, "record margins");
  r.W = opt_ptr<T>(rec.attr("W"), r.count, "record W");
  r.sharpness = opt_ptr<T>(rec.attr("sharpness"), r.count, "record sharpness");
  return r;
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
    require(op.kind != OptimizerKind::Adam || (!st.m.empty() && !st.v.empty()), "Adam needs m and v");
    require(op.kind != OptimizerKind::SGD || op.momentum == 0.0 || !st.m.empty(), "momentum needs m");
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
    const TrainResult res = interruptible([&] { return train_dual(pr, W0v, st, cdfp, tok, op, tp, r); });
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
    Problem<T> pr;
    pr.emb.E = cmatrix<T>(E, "E");
    pr.emb.onehot_col = opt_ptr<std::int64_t, false>(oc, pr.emb.E.rows, "onehot_col");
    pr.emb.onehot_scale = opt_ptr<T, false>(os, pr.emb.E.rows, "onehot_scale");
    pr.U = cmatrix<T>(U, "U");
    pr.layernorm = ln;
    require(pr.U.cols == pr.emb.E.cols, "E and U must have the same number of columns");
    const index_t b = x.shape(0);
    const std::int64_t* xp = cvec<std::int64_t>(x, b, "x");
    const std::int64_t* yp = cvec<std::int64_t>(yb, b, "y");
    bool in_range = true;
    for (index_t i = 0; i < b; ++i) in_range &= xp[i] >= 0 && xp[i] < pr.N() && yp[i] >= 0 && yp[i] < pr.M();
    require(in_range, "x or y out of range");
    auto Wv = cmatrix<T>(W, "W");
    auto Ov = matrix<T>(out, "out");
    PassWorkspace<T> ws;
    py::gil_scoped_release nogil;
    return sgd_step(pr, Wv, xp, yp, b, lr, Ov, ws);
  });
}

// A C-contiguous array of exactly the given shape.
template <class T, bool Writable = false>
auto dense(py::array& a, std::initializer_list<index_t> shape, const char* name) {
  std::string want = "(";
  for (index_t n : shape) want += std::to_string(n) + ",";
  want += ")";
  bool ok = a.ndim() == py::ssize_t(shape.size()) && a.dtype().is(py::dtype::of<T>()) &&
            (a.flags() & py::array::c_style);
  index_t k = 0;
  for (index_t n : shape) ok = ok && a.shape(k++) == n;
  require(ok, std::string(name) + " must be a C-contiguous array of shape " + want + " and the right dtype");
  if constexpr (Writable) {
    require(a.writeable(), std::string(name) + " must be writeable");
    return static_cast<T*>(a.mutable_data());
  } else {
    return static_cast<const T*>(a.data());
  }
}

void py_train_many(py::array E, py::array U, py::array W, py::array p, py::array y, py::array lr, index_t steps,
                   py::array loss, py::array accuracy, py::array status) {
  dispatch(E, [&](auto tag) {
    using T = decltype(tag);
    require(E.ndim() == 3 && U.ndim() == 3, "E and U must be 3-D (runs, tokens, d)");
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
    bool in_range = true;
    for (index_t k = 0; k < P.R * P.N; ++k) in_range &= P.y[k] >= 0 && P.y[k] < P.M;
    require(in_range && steps >= 0, "y out of range or steps < 0");
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
    InputEmbedding<T> emb;
    emb.E = cmatrix<T>(E, "E");
    emb.onehot_col = opt_ptr<std::int64_t, false>(oc, emb.E.rows, "onehot_col");
    emb.onehot_scale = opt_ptr<T, false>(os, emb.E.rows, "onehot_scale");
    MatrixView<const T> Uv;  // None: A holds read-out coefficients (N x d)
    if (!U.is_none()) Uv = cmatrix<T>(U.cast<py::array>(), "U");
    auto W0v = cmatrix<T>(W0, "W0");
    auto Av = cmatrix<T>(A, "A");
    auto Wv = matrix<T>(W_out, "W_out");
    require(Av.rows == emb.E.rows && Av.cols == (U.is_none() ? emb.E.cols : Uv.rows) &&
                Wv.rows == emb.E.cols && Wv.cols == emb.E.cols && W0v.rows == Wv.rows && W0v.cols == Wv.cols,
            "dual_rebuild_W needs A (N x M, or N x d without U), W0 and W_out (d x d)");
    std::vector<T> au;
    py::gil_scoped_release nogil;
    dual_rebuild_W(emb, Uv, W0v, c, Av, Wv, au);
  });
}

void py_cmd_assign_fit(py::array theta, py::array refs, py::array mode, py::array a, py::array b, py::object corr) {
  dispatch(theta, [&](auto tag) {
    using T = decltype(tag);
    CmdFitParams<T> p;
    p.theta = cmatrix<T>(theta, "theta");
    p.refs = cmatrix<double>(refs, "refs");
    const index_t P = p.theta.cols;
    require(p.refs.rows == p.theta.rows, "refs must have a row per step of theta");
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

py::tuple py_train_model(int kind, py::array E, py::array U, py::object W, py::array p, py::array y, py::object cdf,
                         py::object tokens, py::object opt, py::object tpd, py::object rec) {
  return dispatch(E, [&](auto tag) {
    using T = decltype(tag);
    const TrainParams tp = train_params(tpd);
    ModelProblem<T> pr;
    require(kind == 1 || kind == 2, "kind must be 1 (learnable) or 2 (exponential)");
    pr.kind = static_cast<ModelKind>(kind);
    pr.E = matrix<T>(E, "E");
    pr.U = matrix<T>(U, "U");
    require(pr.E.stride == pr.E.cols && pr.U.stride == pr.U.cols, "E and U must be C-contiguous");
    if (!W.is_none()) {
      py::array w = W.cast<py::array>();
      pr.W = matrix<T>(w, "W");
      require(pr.W.stride == pr.W.cols, "W must be C-contiguous");
    }
    const index_t N = pr.E.rows;
    pr.p = cvec<double>(p, N, "p");
    pr.y = cvec<std::int64_t>(y, N, "y");
    pr.layernorm = tp.layernorm;
    ModelOptimizer mo;
    mo.normalized = opt.attr("normalized").cast<bool>();
    mo.lr_W = opt.attr("lr_W").cast<double>();
    mo.lr_E = opt.attr("lr_E").cast<double>();
    mo.lr_U = opt.attr("lr_U").cast<double>();
    mo.eps = opt.attr("eps").cast<double>();
    const double* cdfp = opt_ptr<double, false>(cdf, N, "cdf");
    const std::int64_t* tok = opt_ptr<std::int64_t, false>(tokens, tp.steps, "tokens");
    const TrainRecord<T> r = train_record<T>(rec);
    const TrainResult res = interruptible([&] { return train_model(pr, mo, cdfp, tok, tp, r); });
    return py::make_tuple(static_cast<int>(res.status), res.steps_done, res.records);
  });
}

// groups: (n, 7) int64 rows {H, in_offset, in_row, bias_offset, out_offset, out_outer, out_inner}.
int py_pathcond_solve(py::array weights, py::array groups, py::array z, py::object objective, double tol,
                      std::int64_t max_sweeps, bool enorm) {
  require(weights.ndim() == 1 && weights.dtype().is(py::dtype::of<double>()) &&
              (weights.shape(0) <= 1 || weights.strides(0) == sizeof(double)),
          "weights must be a contiguous float64 vector");
  auto gv = cmatrix<std::int64_t>(groups, "groups");
  require(gv.cols == 7 && gv.stride == 7, "groups must be a contiguous (n, 7) int64 array");
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
  py::gil_scoped_release nogil;
  return static_cast<int>(pathcond_solve(p, ws));
}

int py_get_num_threads() { return fastmem::num_threads(); }

void py_set_num_threads(int n) {
  require(n >= 1, "n must be >= 1");
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

// Scan and Snap (scansnap_train.hpp). facts, sequences, spec and out are the Python
// NamedTuples of fastmem/scansnap/_kernel.py, read once by field name.
template <class T>
MatrixView<T> opt_matrix(py::object o, index_t rows, index_t cols, const char* name) {
  if (o.is_none()) return {};
  py::array a = o.cast<py::array>();
  auto v = matrix<T>(a, name);
  require(v.rows == rows && v.cols == cols, std::string(name) + " has the wrong shape");
  return v;
}

template <class A>
A field_array(py::handle t, const char* name) {
  return py::reinterpret_borrow<py::object>(t).attr(name).cast<A>();
}

py::tuple py_scansnap_train(py::array Yt, py::array Z, py::object mY, py::object vY, py::object mZ, py::object vZ,
                            py::object facts, py::object sequences, py::object spec, py::object out) {
  return dispatch(Yt, [&](auto tag) {
    using T = decltype(tag);
    using namespace fastmem::scansnap;
    State<T> st{matrix<T>(Yt, "Yt"), matrix<T>(Z, "Z"), {}, {}, {}, {}};
    const index_t M = st.Z.cols;
    require(st.Z.rows == M && st.Yt.rows == M && st.Yt.cols == M, "Yt and Z must be M x M");
    st.mY = opt_matrix<T>(mY, M, M, "mY"), st.vY = opt_matrix<T>(vY, M, M, "vY");
    st.mZ = opt_matrix<T>(mZ, M, M, "mZ"), st.vZ = opt_matrix<T>(vZ, M, M, "vZ");
    Spec sp;
    sp.population = spec.attr("population").cast<bool>();
    sp.batch = spec.attr("batch").cast<index_t>(), sp.L = spec.attr("L").cast<index_t>();
    sp.seed = spec.attr("seed").cast<std::uint64_t>();
    sp.start_step = spec.attr("start_step").cast<index_t>(), sp.steps = spec.attr("steps").cast<index_t>();
    sp.lr_y = spec.attr("lr_y").cast<double>(), sp.lr_z = spec.attr("lr_z").cast<double>();
    sp.opt = optimizer_params(spec.attr("opt"));
    sp.adam_t0 = spec.attr("adam_t0").cast<index_t>();
    py::array record = field_array<py::array>(spec, "record");
    sp.n_record = record.shape(0);
    sp.record = cvec<std::int64_t>(record, sp.n_record, "spec.record");
    const bool stateful = !sp.opt.is_plain_sgd();
    require(!stateful || (!st.mY.empty() && !st.mZ.empty()), "mY and mZ are needed by this optimizer");
    require(sp.opt.kind != OptimizerKind::Adam || (!st.vY.empty() && !st.vZ.empty()), "Adam needs vY and vZ");
    require(sp.batch >= 1 && sp.L >= 2 && sp.steps >= 0, "spec: batch >= 1, L >= 2, steps >= 0");

    Facts fa;
    py::array fq, fn, fptr, ftok, fprob, fthr, falias;
    if (!facts.is_none()) {
      fq = field_array<py::array>(facts, "q"), fn = field_array<py::array>(facts, "n");
      fa.F = fq.shape(0);
      fa.q = cvec<std::int64_t>(fq, fa.F, "facts.q"), fa.n = cvec<std::int64_t>(fn, fa.F, "facts.n");
      fptr = field_array<py::array>(facts, "ptr");
      fa.ptr = cvec<std::int64_t>(fptr, fa.F + 1, "facts.ptr");
      const index_t nnz = fa.ptr[fa.F];
      ftok = field_array<py::array>(facts, "tok"), fprob = field_array<py::array>(facts, "prob");
      fthr = field_array<py::array>(facts, "thresh"), falias = field_array<py::array>(facts, "alias");
      fa.tok = cvec<std::int64_t>(ftok, nnz, "facts.tok"), fa.prob = cvec<double>(fprob, nnz, "facts.prob");
      fa.thresh = cvec<std::uint64_t>(fthr, nnz, "facts.thresh");
      fa.alias = cvec<std::int64_t>(falias, nnz, "facts.alias");
      bool ok = fa.F >= 1 && fa.ptr[0] == 0;
      for (index_t f = 0; f < fa.F; ++f)
        ok &= fa.q[f] >= 0 && fa.q[f] < M && fa.n[f] >= 0 && fa.n[f] < M && fa.ptr[f + 1] > fa.ptr[f];
      for (index_t k = 0; ok && k < nnz; ++k) ok &= fa.tok[k] >= 0 && fa.tok[k] < M;
      for (index_t f = 0; ok && f < fa.F; ++f)
        for (index_t k = fa.ptr[f]; k < fa.ptr[f + 1]; ++k) ok &= fa.alias[k] >= 0 && fa.alias[k] < fa.ptr[f + 1] - fa.ptr[f];
      require(ok, "facts: tokens out of range [0, M) or a malformed support");
    }
    Sequences sq;
    py::array stok, star;
    if (!sequences.is_none()) {
      stok = field_array<py::array>(sequences, "tokens"), star = field_array<py::array>(sequences, "target");
      auto tv = cmatrix<std::int64_t>(stok, "sequences.tokens");
      require(tv.stride == tv.cols, "sequences.tokens must be C-contiguous");
      sq.tokens = tv.ptr, sq.S = tv.rows, sq.L = tv.cols;
      sq.target = cvec<std::int64_t>(star, sq.S, "sequences.target");
      bool ok = sq.S >= 1 && sq.L == sp.L;
      for (index_t k = 0; ok && k < sq.S * sq.L; ++k) ok &= sq.tokens[k] >= 0 && sq.tokens[k] < M;
      for (index_t k = 0; ok && k < sq.S; ++k) ok &= sq.target[k] >= 0 && sq.target[k] < M;
      require(ok, "sequences: tokens out of range [0, M), or a length other than spec.L");
    }
    require(sequences.is_none() != facts.is_none() || (!facts.is_none() && !sp.population),
            "scansnap_train: facts, or sequences (sampled only)");
    require(!sp.population || !facts.is_none(), "the population needs facts");
    Output<T> o;
    py::array loss = field_array<py::array>(out, "loss");
    o.loss = vec<double>(loss, sp.steps, "out.loss");
    py::object rl = out.attr("rec_loss"), rq = out.attr("rec_Zq"), ry = out.attr("rec_Y"), rz = out.attr("rec_Z");
    o.rec_loss = opt_ptr<double>(rl, sp.n_record, "out.rec_loss");
    o.rec_Zq = opt_ptr<T>(rq, sp.n_record, "out.rec_Zq");
    o.rec_Y = opt_ptr<T>(ry, sp.n_record, "out.rec_Y");
    o.rec_Z = opt_ptr<T>(rz, sp.n_record, "out.rec_Z");
    if (o.rec_Zq) require(rq.cast<py::array>().size() == sp.n_record * fa.F * M, "out.rec_Zq must be records x F x M");
    if (o.rec_Y) require(ry.cast<py::array>().size() == sp.n_record * M * M, "out.rec_Y must be records x M x M");
    if (o.rec_Z) require(rz.cast<py::array>().size() == sp.n_record * M * M, "out.rec_Z must be records x M x M");
    const TrainResult res = interruptible([&] { return fastmem::scansnap::train<T>(fa, sq, sp, st, o); });
    return py::make_tuple(static_cast<int>(res.status), res.steps_done, res.records);
  });
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
  d["threads"] = py_get_num_threads();
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

// One module per CPU level (CMakeLists.txt: _core_baseline, _core_avx2, ...); fastmem/_core.py
// loads the best one this CPU runs.
#ifndef FASTMEM_MODULE_NAME
#define FASTMEM_MODULE_NAME _core_baseline
#endif
#ifndef FASTMEM_CPU_LEVEL
#define FASTMEM_CPU_LEVEL "baseline"
#endif

PYBIND11_MODULE(FASTMEM_MODULE_NAME, m) {
  m.doc() = "fastmem compiled kernels (C++17 core), built for CPU level " FASTMEM_CPU_LEVEL;
  static py::handle invalid_argument =
      py::object(py::module_::import("fastmem.errors").attr("InvalidArgumentError")).release();
  py::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const std::invalid_argument& err) {
      PyErr_SetString(invalid_argument.ptr(), err.what());
    }
  });
#if defined(FASTMEM_USE_CBLAS) && defined(FASTMEM_OPENBLAS_THREADS)
  // The core runs one BLAS call per OpenMP thread (parallel.hpp).
  FASTMEM_CBLAS(openblas_set_num_threads)(1);
#endif
  m.def("softmax_xent_grad", &py_softmax_xent_grad);
  m.def("sgd_rank_update", &py_sgd_rank_update);
  m.def("sample_tokens", &py_sample_tokens);
  m.def("normal_fill", &py_normal_fill);
  m.def("population_metrics", &py_population_metrics);
  m.def("sharpness", &py_sharpness);
  m.def("train", &py_train);
  m.def("train_dual", &py_train_dual);
  m.def("dual_rebuild_W", &py_dual_rebuild_W);
  m.def("sgd_step", &py_sgd_step);
  m.def("train_many", &py_train_many);
  m.def("train_projected", &py_train_projected);
  m.def("cmd_assign_fit", &py_cmd_assign_fit);
  m.def("train_model", &py_train_model);
  m.def("cmd_online_update", &py_cmd_online_update);
  m.def("pathcond_solve", &py_pathcond_solve);
  m.def("scansnap_train", &py_scansnap_train);
  m.def("info", &info);
  m.def("constants", &constants);
  m.def("get_num_threads", &py_get_num_threads);
  m.def("set_num_threads", &py_set_num_threads);
  m.def("parallel_team_size", &parallel_team_size);
}
