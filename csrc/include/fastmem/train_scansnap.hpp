// The Scan and Snap training driver: batches (sampled from the facts or the user's
// sequences, or the population in the long-sequence limit), both optimizers (Y and Z have
// their own learning rates, as the authors' two torch optimizers), records at chosen steps,
// divergence as a status, Ctrl-C between steps.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/scansnap.hpp"
#include "params.hpp"
#include "train.hpp"

namespace fastmem::scansnap {

struct Spec {
  bool population = false;  // the exact long-sequence-limit dynamics: one row per fact
  index_t batch = 128, L = 128;
  std::uint64_t seed = 0;
  index_t start_step = 0, steps = 0;
  double lr_y = 1.0, lr_z = 1.0;
  OptimizerParams opt;  // SGD (momentum) or Adam; lr, weight decay and schedule unused (lr_y, lr_z)
  index_t adam_t0 = 0;                      // Adam steps already taken (resuming)
  const std::int64_t* record = nullptr;     // ascending global steps in [start_step, start_step + steps]
  index_t n_record = 0;
};

// Parameters and optimizer state, trained in place: Yt = Y^T and Z (M x M); mY/vY and mZ/vZ
// the momentum (SGD) or first/second moments (Adam), empty where the optimizer keeps none.
template <class T>
struct State {
  MatrixView<T> Yt, Z, mY, vY, mZ, vZ;
};

// What a run writes. loss[i]: the loss of step start_step + i's batch before its update (null:
// not kept, the records only).
// Per record k: rec_loss[k]; rec_Zq (k x F x M): the facts' query rows of Z; rec_Y, rec_Z
// (k x M x M, Y in its own layout): copies. Null pointers: not recorded.
template <class T>
struct Output {
  double* loss = nullptr;
  double* rec_loss = nullptr;
  T* rec_Zq = nullptr;
  T* rec_Y = nullptr;
  T* rec_Z = nullptr;
};

template <class T>
void write_record(const State<T>& st, const Facts& facts, const Output<T>& out, index_t k, double loss) {
  const index_t M = st.Z.cols;
  if (out.rec_loss) out.rec_loss[k] = loss;
  if (out.rec_Zq)
    for (index_t f = 0; f < facts.F; ++f)
      std::memcpy(out.rec_Zq + (k * facts.F + f) * M, st.Z.row(facts.q[f]), sizeof(T) * M);
  if (out.rec_Y) {
    T* y = out.rec_Y + k * M * M;
    for (index_t i = 0; i < M; ++i)
      for (index_t l = 0; l < M; ++l) y[i * M + l] = st.Yt(l, i);
  }
  if (out.rec_Z)
    for (index_t i = 0; i < M; ++i) std::memcpy(out.rec_Z + (k * M + i) * M, st.Z.row(i), sizeof(T) * M);
}

// On the memory's loop, drive() (train.hpp): record at step t (the loss of t's batch before
// its update, and the state), then take step t.
template <class T>
TrainResult train(const Facts& facts, const Sequences& seq, const Spec& sp, State<T> st, const Output<T>& out) {
  const index_t M = st.Z.cols;
  Histograms<T> h;
  Gradients<T> gr;
  TouchedRows ty, tz;
  std::vector<std::int64_t> mark(M, -1), slot(M, -1), keys_y, keys_z, entry_row, flat;
  if (sp.population) population_batch(facts, h);
  const double weight = 1.0 / static_cast<double>(sp.population ? facts.F : sp.batch);
  index_t computed = -1, rk = 0;
  // step i's batch, its loss and the pieces of both gradients (once per step)
  auto batch = [&](index_t i) {
    if (computed == i) return;
    if (!sp.population) sample_batch(facts, seq, sp.seed, sp.start_step + i, sp.batch, sp.L, M, h);
    forward_backward<T>(st.Yt, st.Z, h, weight, gr);
    if (i < sp.steps && out.loss) out.loss[i] = gr.loss;
    computed = i;
  };
  auto record = [&](index_t i, TrainResult& res) {
    if (rk >= sp.n_record || sp.record[rk] != sp.start_step + i) return;
    batch(i);
    write_record(st, facts, out, rk++, gr.loss);
    res.records = rk;
    if (!std::isfinite(gr.loss)) res.status = Status::Diverged;
  };
  auto step = [&](index_t i) {
    batch(i);
    if (!std::isfinite(gr.loss)) return false;
    // The entries of the gradients: Y^T's rows are the context tokens, Z's the queries.
    keys_y.clear(), keys_z.clear(), entry_row.clear(), flat.clear();
    for (index_t b = 0; b < h.rows(); ++b) {
      keys_z.push_back(h.q[b]);
      for (index_t j = 0; j < h.len[b]; ++j) {
        keys_y.push_back(h.tok[h.start[b] + j]);
        entry_row.push_back(b), flat.push_back(h.start[b] + j);
      }
    }
    group_by(keys_y, mark, ty);
    group_by(keys_z, mark, tz);
    const index_t adam_t = sp.adam_t0 + i + 1;
    update_rows<T>(st.Yt, st.mY, st.vY, sp.opt, sp.lr_y, adam_t, ty, slot, [&](index_t k, T* G) {
      for (index_t a = ty.first[k]; a < ty.first[k + 1]; ++a) {
        const index_t e = ty.entry[a];
        const T c = gr.g[flat[e]];
        const T* r = gr.r.data() + entry_row[e] * M;
#pragma omp simd
        for (index_t j = 0; j < M; ++j) G[j] += c * r[j];
      }
    });
    update_rows<T>(st.Z, st.mZ, st.vZ, sp.opt, sp.lr_z, adam_t, tz, slot, [&](index_t k, T* G) {
      for (index_t a = tz.first[k]; a < tz.first[k + 1]; ++a) {
        const index_t b = tz.entry[a];
        for (index_t j = 0; j < h.len[b]; ++j) G[h.tok[h.start[b] + j]] += gr.dz[h.start[b] + j];
      }
    });
    computed = -1;
    return true;
  };
  return drive(sp.steps, record, step);
}

}  // namespace fastmem::scansnap
