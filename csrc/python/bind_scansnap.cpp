// Bindings of Scan and Snap (train_scansnap.hpp). facts, sequences, spec and out are the
// NamedTuples of fastmem/scansnap/train.py, read once by field name.
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

py::tuple py_scansnap_train(py::array Yt, py::array Z, py::object mY, py::object vY, py::object mZ, py::object vZ,
                            py::object facts, py::object sequences, py::object spec, py::object out) {
  return dispatch(Yt, [&](auto tag) {
    using T = decltype(tag);
    using namespace fastmem::scansnap;
    State<T> st{matrix<T>(Yt, "Yt"), matrix<T>(Z, "Z"), {}, {}, {}, {}};
    const index_t M = st.Z.cols;
    FASTMEM_CHECK_ARG(st.Z.rows == M && st.Yt.rows == M && st.Yt.cols == M, "Yt and Z must be M x M");
    st.mY = opt_matrix<T>(mY, M, M, "mY"), st.vY = opt_matrix<T>(vY, M, M, "vY");
    st.mZ = opt_matrix<T>(mZ, M, M, "mZ"), st.vZ = opt_matrix<T>(vZ, M, M, "vZ");
    Spec sp;  // spec: fastmem/scansnap/train.py's Spec
    sp.population = spec.attr("population").cast<bool>();
    sp.batch = spec.attr("batch").cast<index_t>(), sp.L = spec.attr("L").cast<index_t>();
    sp.seed = spec.attr("seed").cast<std::uint64_t>();
    sp.start_step = spec.attr("start_step").cast<index_t>(), sp.steps = spec.attr("steps").cast<index_t>();
    sp.lr_y = spec.attr("lr_y").cast<double>(), sp.lr_z = spec.attr("lr_z").cast<double>();
    sp.opt = optimizer_params(spec.attr("opt"));
    sp.adam_t0 = spec.attr("adam_t0").cast<index_t>();
    py::array record = field_array(spec, "record");
    sp.n_record = record.shape(0);
    sp.record = cvec<std::int64_t>(record, sp.n_record, "spec.record");
    const bool stateful = !sp.opt.is_plain_sgd();
    FASTMEM_CHECK_ARG(!stateful || (!st.mY.empty() && !st.mZ.empty()), "mY and mZ are needed by this optimizer");
    FASTMEM_CHECK_ARG(sp.opt.kind != OptimizerKind::Adam || (!st.vY.empty() && !st.vZ.empty()), "Adam needs vY and vZ");
    FASTMEM_CHECK_ARG(sp.batch >= 1 && sp.L >= 2 && sp.steps >= 0, "spec: batch >= 1, L >= 2, steps >= 0");

    Facts fa;
    py::array fq, fn, fptr, ftok, fprob, fthr, falias;
    if (!facts.is_none()) {
      fq = field_array(facts, "q"), fn = field_array(facts, "n");
      fa.F = fq.shape(0);
      fa.q = cvec<std::int64_t>(fq, fa.F, "facts.q"), fa.n = cvec<std::int64_t>(fn, fa.F, "facts.n");
      fptr = field_array(facts, "ptr");
      fa.ptr = cvec<std::int64_t>(fptr, fa.F + 1, "facts.ptr");
      const index_t nnz = fa.ptr[fa.F];
      ftok = field_array(facts, "tok"), fprob = field_array(facts, "prob");
      fthr = field_array(facts, "thresh"), falias = field_array(facts, "alias");
      fa.tok = cvec<std::int64_t>(ftok, nnz, "facts.tok"), fa.prob = cvec<double>(fprob, nnz, "facts.prob");
      fa.thresh = cvec<std::uint64_t>(fthr, nnz, "facts.thresh");
      fa.alias = cvec<std::int64_t>(falias, nnz, "facts.alias");
      // the supports' tokens and alias tables are checked once, by fm.scansnap.Facts
      // (scansnap/data.py); here only the layout that the loops index by
      FASTMEM_CHECK_ARG(fa.F >= 1 && fa.ptr[0] == 0, "facts.ptr must start at 0");
    }
    Sequences sq;
    py::array stok, star;
    if (!sequences.is_none()) {
      stok = field_array(sequences, "tokens"), star = field_array(sequences, "target");
      auto tv = cmatrix<std::int64_t>(stok, "sequences.tokens");
      FASTMEM_CHECK_ARG(tv.stride == tv.cols, "sequences.tokens must be C-contiguous");
      sq.tokens = tv.ptr, sq.S = tv.rows, sq.L = tv.cols;
      sq.target = cvec<std::int64_t>(star, sq.S, "sequences.target");
      // the tokens are range-checked once, by fm.scansnap.Sequences (scansnap/data.py)
      FASTMEM_CHECK_ARG(sq.S >= 1 && sq.L == sp.L, "sequences: a length other than spec.L");
    }
    FASTMEM_CHECK_ARG(sequences.is_none() != facts.is_none() || (!facts.is_none() && !sp.population),
            "scansnap_train: facts, or sequences (sampled only)");
    FASTMEM_CHECK_ARG(!sp.population || !facts.is_none(), "the population needs facts");
    Output<T> o;
    py::array loss = field_array(out, "loss");
    if (loss.size()) o.loss = vec<double>(loss, sp.steps, "out.loss");  // empty: each step's loss not kept
    py::object rl = out.attr("rec_loss"), rq = out.attr("rec_Zq"), ry = out.attr("rec_Y"), rz = out.attr("rec_Z");
    o.rec_loss = opt_ptr<double>(rl, sp.n_record, "out.rec_loss");
    o.rec_Zq = opt_ptr<T>(rq, sp.n_record, "out.rec_Zq");
    o.rec_Y = opt_ptr<T>(ry, sp.n_record, "out.rec_Y");
    o.rec_Z = opt_ptr<T>(rz, sp.n_record, "out.rec_Z");
    if (o.rec_Zq) FASTMEM_CHECK_ARG(rq.cast<py::array>().size() == sp.n_record * fa.F * M, "out.rec_Zq must be records x F x M");
    if (o.rec_Y) FASTMEM_CHECK_ARG(ry.cast<py::array>().size() == sp.n_record * M * M, "out.rec_Y must be records x M x M");
    if (o.rec_Z) FASTMEM_CHECK_ARG(rz.cast<py::array>().size() == sp.n_record * M * M, "out.rec_Z must be records x M x M");
    const TrainResult res = interruptible([&] { return fastmem::scansnap::train<T>(fa, sq, sp, st, o); });
    return py::make_tuple(static_cast<int>(res.status), res.steps_done, res.records);
  });
}

void bind_scansnap(py::module_& m) { m.def("scansnap_train", &py_scansnap_train); }

}  // namespace

FASTMEM_BIND_SYSTEM(scansnap, bind_scansnap);
