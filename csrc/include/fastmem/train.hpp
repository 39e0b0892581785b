// The multi-step driver: T steps of full-batch GD or minibatch SGD/Adam/sign
// descent inside one call, recording population metrics at the requested
// steps. A non-finite loss stops the run with Status::Diverged; what was
// recorded before stays.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "constants.hpp"
#include "errors.hpp"
#include "interrupt.hpp"
#include "kernels/dual_step.hpp"
#include "kernels/metrics.hpp"
#include "kernels/normalized_rank_update.hpp"
#include "optim.hpp"
#include "params.hpp"
#include "rng.hpp"
#include "simd.hpp"

namespace fastmem {

// Outputs at the recorded steps `at` (sorted, unique, in [0, steps], counted in
// updates done). Any pointer but `at` may be null to skip that metric.
template <class T>
struct TrainRecord {
  const std::int64_t* at = nullptr;  // count
  index_t count = 0;
  T* loss = nullptr;       // count
  T* accuracy = nullptr;   // count
  T* margins = nullptr;    // count x N
  T* W = nullptr;          // count x d x d
  T* sharpness = nullptr;  // count

  // Whether record r is due at step t.
  bool due(index_t r, index_t t) const { return r < count && at[r] == t; }
};

// Draws of one minibatch, merged: distinct tokens (first-appearance order) with
// weight count / b. Scores depend on the token only, so a batch of 1024 Zipf
// draws over 100 tokens costs a few dozen rows, not 1024.
struct BatchAggregator {
  std::vector<index_t> slot;
  std::vector<std::int64_t> distinct;
  std::vector<index_t> count;

  template <class T>
  index_t aggregate(const std::int64_t* draws, index_t b, index_t N, std::vector<T>& weights) {
    slot.resize(std::size_t(N), -1);
    distinct.clear();
    count.clear();
    for (index_t i = 0; i < b; ++i) {
      const std::int64_t x = draws[i];
      FASTMEM_CHECK_ARG(x >= 0 && x < N, "tokens: a token out of [0, N)");  // given tokens reach here too
      if (slot[x] < 0) {
        slot[x] = index_t(distinct.size());
        distinct.push_back(x);
        count.push_back(0);
      }
      ++count[slot[x]];
    }
    weights.resize(distinct.size());
    for (std::size_t j = 0; j < distinct.size(); ++j) {
      weights[j] = static_cast<T>(double(count[j]) / double(b));
      slot[distinct[j]] = -1;
    }
    return index_t(distinct.size());
  }
};

// The tokens of each step: all N with weights p (full batch, b == 0), or b draws,
// sampled from the counter-based stream or given, merged into distinct tokens.
template <class T>
struct BatchSource {
  index_t N, b;
  const double* cdf;
  const std::int64_t* given;  // steps x b, or null
  CounterRng rng;
  BatchAggregator agg, agg_ahead;
  std::vector<std::int64_t> draws, current, ahead;  // the tokens drawn ahead (peek) and handed out
  std::vector<T> full_weights, ahead_weights;
  index_t ahead_t = -1;  // the step peek() drew, or -1

  BatchSource(index_t N_, index_t b_, const double* p, const double* cdf_, const std::int64_t* given_,
              std::uint64_t seed)
      : N(N_), b(b_), cdf(cdf_), given(given_), rng(seed), draws(static_cast<std::size_t>(b_)) {
    FASTMEM_CHECK_ARG(b >= 0, "batch_size must be >= 0 (0: full batch)");
    FASTMEM_CHECK_ARG(b == 0 || given || cdf, "minibatch training needs a token CDF or given tokens");
    if (b == 0)
      for (index_t x = 0; x < N; ++x) full_weights.push_back(static_cast<T>(p[x]));
  }

  // Step t of this call (global step gt): sets tokens (null: all N in order) and weights,
  // returns the number of rows. The tokens stay valid until the next call of next().
  index_t next(index_t t, index_t gt, const std::int64_t*& tokens, std::vector<T>& weights) {
    if (t == ahead_t) {  // drawn ahead by peek()
      ahead_t = -1;
      current.swap(ahead);
      weights.swap(ahead_weights);
      tokens = current.data();
      return index_t(current.size());
    }
    return draw(t, gt, agg, tokens, weights);
  }

  // Step t's batch ahead of its step, for a step that reads the next batch's rows early: its
  // tokens (a full batch as the list 0..N-1) and weights; next(t) then hands out the same.
  index_t peek(index_t t, index_t gt, const std::int64_t*& tokens) {
    const std::int64_t* drawn;
    const index_t rows = draw(t, gt, agg_ahead, drawn, ahead_weights);
    ahead.resize(std::size_t(rows));
    for (index_t r = 0; r < rows; ++r) ahead[r] = token_at(drawn, r);
    ahead_t = t;
    tokens = ahead.data();
    return rows;
  }

 private:
  index_t draw(index_t t, index_t gt, BatchAggregator& into, const std::int64_t*& tokens, std::vector<T>& weights) {
    if (b == 0) {
      tokens = nullptr;
      weights = full_weights;
      return N;
    }
    if (given) {
      std::copy(given + t * b, given + (t + 1) * b, draws.begin());
    } else {
      const std::uint64_t base = std::uint64_t(gt) * std::uint64_t(b);
      for (index_t i = 0; i < b; ++i) draws[i] = sample_index(cdf, N, rng.uniform(base + i));
    }
    const index_t rows = into.aggregate(draws.data(), b, N, weights);
    tokens = into.distinct.data();
    return rows;
  }
};

// Step t's batch, as the driver hands it to a trainer's step: the step of this call and its
// global step, the schedule's learning rate there, the distinct tokens (null: all N, in order)
// and their weights (count / b, or p for the full batch).
template <class T>
struct Batch {
  index_t t = 0, gt = 0;
  double lr = 0.0;
  const std::int64_t* tokens = nullptr;
  index_t rows = 0;
  std::vector<T> weights;
};

// The loop every representation and model shares: record at t, then take step t, until
// `steps`, divergence or a stop asked through the installed StopProbe (polled between
// steps; what was recorded stays). A representation is a policy of two callables over its
// own state: record(t, res) writes the records due at t (res.records) and flags a non-finite
// loss (res.status); step(t) takes step t and returns false when the loss turned non-finite.
// Batching (BatchSource), schedules (lr_at) and the record writers (store_metrics,
// store_memory) are the pieces the policies share. `poller`: one shared by the runs of a
// parallel region (train_many), else the run's own.
template <class RecordFn, class StepFn>
TrainResult drive(index_t steps, RecordFn&& record, StepFn&& step, StopPoller& poller) {
  TrainResult res;
  for (index_t t = 0;; ++t) {
    record(t, res);
    res.steps_done = t;
    if (t == steps || res.status != Status::Ok) break;
    if (poller.stop()) {
      res.status = Status::Interrupted;
      break;
    }
    if (!step(t)) {
      res.status = Status::Diverged;
      break;
    }
  }
  return res;
}

template <class RecordFn, class StepFn>
TrainResult drive(index_t steps, RecordFn&& record, StepFn&& step) {
  StopPoller poller;
  return drive(steps, record, step, poller);
}

// drive() for the trainers of the memory: the driver walks the records due at t (record(r, res)
// writes record r and flags a non-finite loss in res), draws step t's batch, computes its
// learning rate, and hands them to step(batch).
template <class T, class RecordFn, class StepFn>
TrainResult drive(index_t steps, const TrainRecord<T>& rec, const OptimizerParams& opt, index_t start_step,
                  BatchSource<T>& batches, RecordFn&& record, StepFn&& step) {
  Batch<T> batch;
  return drive(
      steps,
      [&](index_t t, TrainResult& res) {
        for (; rec.due(res.records, t); ++res.records) record(res.records, res);
      },
      [&](index_t t) {
        batch.t = t;
        batch.gt = start_step + t;
        batch.lr = lr_at(opt, batch.gt);
        batch.rows = batches.next(t, batch.gt, batch.tokens, batch.weights);
        return step(batch);
      });
}

// The population metrics of a representation that scores all N tokens itself: its loss and the
// accuracy, the mass of p on tokens with a positive margin (margins: N).
template <class T>
PopulationMetrics scored_metrics(double loss, const T* margins, const double* p, index_t N) {
  PopulationMetrics pm;
  pm.loss = loss;
  for (index_t x = 0; x < N; ++x)
    if (margins[x] > T(0)) pm.accuracy += p[x];
  return pm;
}

// Writes the loss / accuracy / margins of a record and flags a non-finite loss.
template <class T>
void store_metrics(const TrainRecord<T>& rec, index_t r, const PopulationMetrics& m, TrainResult& res) {
  if (rec.loss) rec.loss[r] = static_cast<T>(m.loss);
  if (rec.accuracy) rec.accuracy[r] = static_cast<T>(m.accuracy);
  if (!std::isfinite(m.loss)) res.status = Status::Diverged;
}

// Writes the W and sharpness records of record r from the memory W.
template <class T>
void store_memory(const Problem<T>& prob, MatrixView<const T> W, const TrainRecord<T>& rec, index_t r,
                  const TrainParams& tp, HvpWorkspace<T>& hvp_ws) {
  const index_t d = W.rows;
  if (rec.W)
    for (index_t i = 0; i < d; ++i) std::copy(W.row(i), W.row(i) + d, rec.W + (r * d + i) * d);
  if (rec.sharpness)
    rec.sharpness[r] = static_cast<T>(sharpness(prob, W, tp.power_iters, kSharpnessTol, tp.seed, hvp_ws));
}

template <class T>
TrainResult train(const Problem<T>& prob, MatrixView<T> W_io, const double* cdf, const std::int64_t* given_tokens,
                  const OptimizerParams& opt, OptimizerState<T>& state, const TrainParams& tp,
                  const TrainRecord<T>& rec) {
  const index_t N = prob.N(), d = prob.d();
  FASTMEM_CHECK_ARG(W_io.rows == d && W_io.cols == d, "W must be d x d");
  const bool plain_sgd = opt.is_plain_sgd();
  const bool sign = opt.kind == OptimizerKind::Sign;
  const bool normalized_adam = opt.is_normalized_adam();
  // Stateless elementwise updates of a dense E: one pass over W per step that also reads
  // the next batch's rows (normalized_rank_update), no d x d gradient buffer.
  const bool normalized = (normalized_adam || sign) && !prob.emb.onehot();
  PassWorkspace<T> pass, metrics_ws;
  HvpWorkspace<T> hvp_ws;
  BatchSource<T> batches(N, tp.batch_size, prob.p, cdf, given_tokens, tp.seed);
  const bool fused_update = plain_sgd || normalized;
  std::vector<T> ebt, ent, q_next;
  // pass.q holds this step's read-outs and ent its E columns, taken by the last update
  bool read_ahead = false;
  // The fused pass works on whole aligned vectors: W is trained in a padded copy, and H and
  // the next read-outs pass through padded buffers.
  std::optional<simd::PaddedRows<T>> W_padded;
  simd::PaddedRows<T> h_padded, q_padded;
  if (normalized) W_padded.emplace(MatrixView<const T>(W_io));
  const MatrixView<T> W = normalized ? W_padded->view() : W_io;
  std::vector<T> grad_buf(fused_update ? 0 : std::size_t(d * d));
  MatrixView<T> grad(grad_buf.data(), fused_update ? 0 : d, fused_update ? 0 : d);

  auto record = [&](index_t r, TrainResult& res) {
    if (rec.loss || rec.accuracy || rec.margins)
      store_metrics(rec, r,
                    population_metrics(prob, MatrixView<const T>(W), rec.margins ? rec.margins + r * N : nullptr,
                                       MatrixView<T>(), metrics_ws),
                    res);
    store_memory(prob, MatrixView<const T>(W), rec, r, tp, hvp_ws);
  };

  auto step = [&](Batch<T>& batch) {
    const index_t t = batch.t;
    const double lr = batch.lr;
    const std::int64_t* tokens = batch.tokens;
    const index_t rows = batch.rows;
    pass.w.swap(batch.weights);
    if (read_ahead) pass.q.swap(q_next);
    const double loss = forward_backward(prob, MatrixView<const T>(W), tokens, rows, pass, nullptr, read_ahead);
    const bool columns_ready = read_ahead;
    read_ahead = false;
    if (!std::isfinite(loss)) return false;
    MatrixView<const T> H(pass.h.data(), rows, d);
    if (plain_sgd) {
      embed_write(prob.emb, tokens, pass.Eb, H, static_cast<T>(-lr), W);
    } else if (normalized) {
      state.t += 1;
      if (columns_ready) ebt.swap(ent);
      const MatrixView<const T> EbT =
          columns_ready ? MatrixView<const T>(ebt.data(), d, rows) : gather_columns(prob.emb.E, tokens, rows, ebt);
      MatrixView<const T> EnT;
      MatrixView<T> Qn;
      if (t + 1 < tp.steps) {  // the next batch's rows, read by this pass (the driver hands it out next)
        const std::int64_t* tn;
        const index_t rn = batches.peek(t + 1, batch.gt + 1, tn);
        EnT = gather_columns(prob.emb.E, tn, rn, ent);
        q_padded.reset(rn, d);
        Qn = q_padded.padded_view();
        read_ahead = true;
      }
      h_padded.assign(H);
      normalized_rank_update(W_padded->padded_view(), EbT, MatrixView<const T>(h_padded.padded_view()),
                             static_cast<T>(lr), static_cast<T>(opt.eps),
                             static_cast<T>(1.0 - lr * opt.weight_decay), sign, EnT, Qn);
      if (read_ahead) {
        q_next.resize(std::size_t(Qn.rows * d));
        q_padded.copy_to(MatrixView<T>(q_next.data(), Qn.rows, d));
      }
    } else {
      for (index_t i = 0; i < d; ++i) std::fill(grad.row(i), grad.row(i) + d, T(0));
      embed_write(prob.emb, tokens, pass.Eb, H, T(1), grad);
      optimizer_step(opt, lr, MatrixView<const T>(grad), W, state);
    }
    return true;
  };
  const TrainResult res = drive(tp.steps, rec, opt, tp.start_step, batches, record, step);
  if (W_padded) W_padded->copy_to(W_io);
  return res;
}

// One SGD step for simulators that own their loop: b draws x with their own
// targets yb, each of weight 1 / b; W_out = W - lr E[x]^T H. W_out may be W
// (in place); the memory is read before it is written. Returns the batch loss.
template <class T>
double sgd_step(const Problem<T>& prob, MatrixView<const T> W, const std::int64_t* x, const std::int64_t* yb,
                index_t b, double lr, MatrixView<T> W_out, PassWorkspace<T>& ws) {
  const index_t d = prob.d();
  FASTMEM_CHECK_ARG(W.rows == d && W.cols == d && W_out.rows == d && W_out.cols == d, "W and out must be d x d");
  FASTMEM_CHECK_ARG(b >= 1, "the batch must hold at least one token");
  for (index_t i = 0; i < b; ++i)
    FASTMEM_CHECK_ARG(x[i] >= 0 && x[i] < prob.N() && yb[i] >= 0 && yb[i] < prob.M(),
                      "x, y: a token out of [0, N) or a target out of [0, M)");
  ws.w.assign(std::size_t(b), static_cast<T>(1.0 / double(b)));
  const double loss = forward_backward(prob, W, x, b, ws, yb);
  if (W_out.ptr != W.ptr)
    for (index_t i = 0; i < d; ++i) std::copy(W.row(i), W.row(i) + d, W_out.row(i));
  embed_write(prob.emb, x, ws.Eb, MatrixView<const T>(ws.H(b, d)), static_cast<T>(-lr), W_out);
  return loss;
}

// The state of a dual run, caller-owned: Z and coefficients A (N x R), with R = M
// (Z the scores E W U^T, W = c W0 - E^T A U) or, with LayerNorm, R = d (Z the
// read-outs E W, W = c W0 - E^T A); with momentum, the momentum mA of A and its image
// mZ = K_E mA K_U, the momentum of Z (N x R, else empty). `fresh` starts from W0 (A = 0).
template <class T>
struct DualState {
  MatrixView<T> Z, A, mA, mZ;
  double c = 1.0;
  bool fresh = true;
};

// The same run as train() for an SGD-family optimizer (momentum and decoupled
// weight decay included), simulated on the dual state instead of W: same
// sampling, same records. W is rebuilt only on request (dual_rebuild_W).
template <class T>
TrainResult train_dual(const Problem<T>& prob, MatrixView<const T> W0, DualState<T>& st, const double* cdf,
                       const std::int64_t* given_tokens, const OptimizerParams& opt, const TrainParams& tp,
                       const TrainRecord<T>& rec) {
  FASTMEM_CHECK_ARG(opt.kind == OptimizerKind::SGD,
                    "the dual representation needs an optimizer linear in the gradient (SGD, momentum, weight decay)");
  const index_t N = prob.N(), M = prob.M(), d = prob.d();
  const bool readout = prob.layernorm;
  const index_t R = readout ? d : M;
  FASTMEM_CHECK_ARG(W0.rows == d && W0.cols == d, "W0 must be d x d");
  const bool momentum = opt.momentum != 0.0;
  MatrixView<T> Z = st.Z, A = st.A, mA = st.mA, mZ = st.mZ;
  double& c = st.c;
  FASTMEM_CHECK_ARG(Z.rows == N && Z.cols == R && A.rows == N && A.cols == R,
                    "Z and A must be N x M (N x d with LayerNorm)");
  FASTMEM_CHECK_ARG(!momentum || (mA.rows == N && mA.cols == R && mZ.rows == N && mZ.cols == R),
                    "momentum needs mA and mZ, shaped like Z");
  std::vector<T> ke, ke_diag, ku, ku_diag;
  const Gram<T> KE = make_gram(prob.emb.E, ke, ke_diag);
  Gram<T> KU;
  if (readout) {
    ku_diag.assign(std::size_t(d), T(1));  // the read-out update has no U on the right
    KU.diag = ku_diag.data();
  } else {
    KU = make_gram(prob.U, ku, ku_diag);
  }
  std::vector<T> g, p_weights, margin_buf, au, w_buf;
  bool w0_zero = true;
  if (st.fresh) {
    c = 1.0;
    for (auto X : {Z, A, mA, mZ})
      for (index_t x = 0; x < X.rows; ++x) std::fill(X.row(x), X.row(x) + X.cols, T(0));
    for (index_t i = 0; i < d && w0_zero; ++i)
      for (index_t j = 0; j < d; ++j) w0_zero = w0_zero && W0(i, j) == T(0);
    st.fresh = false;
  }
  if (!w0_zero && readout) {  // Z_0 = E W_0
    embed_read(prob.emb, nullptr, prob.emb.E, W0, Z);
  } else if (!w0_zero) {  // Z_0 = E (W_0 U^T): d^2 M + N d M multiply-adds, not N d^2
    std::vector<T> v0(std::size_t(d * M));
    MatrixView<T> V0(v0.data(), d, M);
    blas::gemm<T>(false, true, T(1), W0, prob.U, T(0), V0);
    embed_read(prob.emb, nullptr, prob.emb.E, MatrixView<const T>(V0), Z);
  }
  for (index_t x = 0; x < N; ++x) p_weights.push_back(static_cast<T>(prob.p[x]));
  BatchSource<T> batches(N, tp.batch_size, prob.p, cdf, given_tokens, tp.seed);
  DualWorkspace<T> ws;
  PassWorkspace<T> pass;
  HvpWorkspace<T> hvp_ws;
  if (rec.W || rec.sharpness) w_buf.resize(std::size_t(d * d));
  MatrixView<T> W(w_buf.data(), d, d);
  auto rebuild = [&] {
    dual_rebuild_W(prob.emb, readout ? MatrixView<const T>() : prob.U, W0, c, MatrixView<const T>(A), W, au);
  };

  // Loss of the rows (null: all N), their margins (nullable) and residual rows G
  // (b x R; empty to skip): softmax - onehot, or dL/dQ through LayerNorm.
  auto residual = [&](const std::int64_t* tokens, index_t rows, const T* w, MatrixView<T> G, T* margins) {
    if (!readout) return dual_residual<T>(MatrixView<const T>(Z), prob.y, tokens, rows, w, G, margins);
    pass.resize(rows, d);
    MatrixView<T> Q = pass.Q(rows, d), H = pass.H(rows, d);
    for (index_t i = 0; i < rows; ++i) {
      const std::int64_t x = token_at(tokens, i);
      std::copy(Z.row(x), Z.row(x) + d, Q.row(i));
      pass.yb[i] = prob.y[x];
    }
    layernorm_forward(Q, pass.r.data());
    SoftmaxXentGradParams<T> sp{Q, prob.U, pass.yb.data(), w, H, pass.lse.data(), pass.zy.data(),
                                pass.zother.data(), prob.chunk};
    softmax_xent_grad(sp, pass.sx);
    double loss = 0.0;
    for (index_t i = 0; i < rows; ++i) {
      loss += double(w[i]) * (double(pass.lse[i]) - double(pass.zy[i]));
      if (margins) margins[i] = pass.zy[i] - pass.zother[i];
    }
    if (!G.empty()) {
      layernorm_backward(MatrixView<const T>(Q), pass.r.data(), H);
      for (index_t i = 0; i < rows; ++i) std::copy(H.row(i), H.row(i) + d, G.row(i));
    }
    return loss;
  };

  auto record = [&](index_t r, TrainResult& res) {
    if (rec.loss || rec.accuracy || rec.margins) {
      T* m = rec.margins ? rec.margins + r * N : (margin_buf.resize(std::size_t(N)), margin_buf.data());
      const double loss = residual(nullptr, N, p_weights.data(), MatrixView<T>(), m);
      store_metrics(rec, r, scored_metrics(loss, m, prob.p, N), res);
    }
    if (rec.W || rec.sharpness) rebuild();
    store_memory(prob, MatrixView<const T>(W), rec, r, tp, hvp_ws);
  };

  auto step = [&](Batch<T>& batch) {
    const double lr = batch.lr;
    const std::int64_t* tokens = batch.tokens;
    const index_t rows = batch.rows;
    g.resize(std::size_t(rows * R));
    MatrixView<T> G(g.data(), rows, R);
    const double loss = residual(tokens, rows, batch.weights.data(), G, nullptr);
    if (!std::isfinite(loss)) return false;
    const T decay = static_cast<T>(1.0 - lr * opt.weight_decay), lrt = static_cast<T>(lr);
    if (decay != T(1)) {
      scale_all(Z, decay);
      scale_all(A, decay);
      c *= double(decay);
    }
    if (momentum) {  // mA = mu mA + G, mZ = K_E mA K_U, Z -= lr mZ, A += lr mA
      const T mu = static_cast<T>(opt.momentum);
      scale_all(mA, mu);
      dual_rows_add(tokens, MatrixView<const T>(G), T(1), mA);
      scale_all(mZ, mu);
      dual_scores_update(KE, KU, tokens, MatrixView<const T>(G), T(1), mZ, ws);
      for (index_t x = 0; x < N; ++x)
        for (index_t k = 0; k < R; ++k) {
          Z(x, k) -= lrt * mZ(x, k);
          A(x, k) += lrt * mA(x, k);
        }
    } else {
      dual_scores_update(KE, KU, tokens, MatrixView<const T>(G), -lrt, Z, ws);
      dual_rows_add(tokens, MatrixView<const T>(G), lrt, A);
    }
    return true;
  };
  return drive(tp.steps, rec, opt, tp.start_step, batches, record, step);
}

}  // namespace fastmem
