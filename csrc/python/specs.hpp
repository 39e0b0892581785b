// The typed specs of fastmem/specs.py (NamedTuples, read by field name) as the core's structs
// of params.hpp, train.hpp and problem.hpp: one function per struct, used by every binding.
#pragma once
#include <pybind11/pybind11.h>

#include <fastmem/train_models.hpp>
#include <fastmem/params.hpp>
#include <fastmem/problem.hpp>
#include <fastmem/train.hpp>

#include "arrays.hpp"

namespace fastmem::binding {

namespace py = pybind11;

// OptimizerSpec -> OptimizerParams
inline OptimizerParams optimizer_params(const py::object& o) {
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

// ModelOptimizerSpec -> ModelOptimizer
inline ModelOptimizer model_optimizer(const py::object& o) {
  ModelOptimizer mo;
  mo.opt = optimizer_params(o.attr("opt"));
  mo.lr_E = o.attr("lr_E").cast<double>();
  mo.lr_U = o.attr("lr_U").cast<double>();
  return mo;
}

// TrainSpec -> TrainParams
inline TrainParams train_params(const py::object& o) {
  TrainParams tp;
  tp.steps = o.attr("steps").cast<index_t>();
  tp.batch_size = o.attr("batch_size").cast<index_t>();
  tp.seed = o.attr("seed").cast<std::uint64_t>();
  tp.start_step = o.attr("start_step").cast<index_t>();
  tp.layernorm = o.attr("layernorm").cast<bool>();
  tp.chunk = o.attr("chunk").cast<index_t>();
  tp.power_iters = o.attr("power_iters").cast<index_t>();
  return tp;
}

// RecordSpec -> TrainRecord<T>
template <class T>
TrainRecord<T> train_record(const py::object& rec) {
  py::array at = field_array(rec, "at");
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

// (E, onehot_col, onehot_scale) -> InputEmbedding<T>: E dense, or one-hot rows (column, scale).
template <class T>
InputEmbedding<T> input_embedding(const py::array& E, const py::object& oc, const py::object& os) {
  InputEmbedding<T> emb;
  emb.E = cmatrix<T>(E, "E");
  emb.onehot_col = opt_ptr<std::int64_t, false>(oc, emb.E.rows, "onehot_col");
  emb.onehot_scale = opt_ptr<T, false>(os, emb.E.rows, "onehot_scale");
  FASTMEM_CHECK_ARG(!emb.onehot_col == !emb.onehot_scale, "onehot_col and onehot_scale go together");
  return emb;
}

// The arrays of a problem -> Problem<T>; p and y may be None (a step on given tokens).
template <class T>
Problem<T> problem(const py::array& E, const py::object& oc, const py::object& os, const py::array& U,
                   const py::object& p, const py::object& y, bool ln, index_t chunk) {
  Problem<T> pr;
  pr.emb = input_embedding<T>(E, oc, os);
  const index_t N = pr.emb.E.rows;
  pr.U = cmatrix<T>(U, "U");
  FASTMEM_CHECK_ARG(pr.U.cols == pr.emb.E.cols, "E and U must have the same number of columns");
  if (!p.is_none()) pr.p = cvec<double>(p.cast<py::array>(), N, "p");
  if (!y.is_none()) pr.y = cvec<std::int64_t>(y.cast<py::array>(), N, "y");
  pr.layernorm = ln;
  pr.chunk = chunk;
  return pr;
}

}  // namespace fastmem::binding
