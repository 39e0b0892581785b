// The multi-step driver: T steps of full-batch GD or minibatch SGD/Adam/sign
// descent inside one call, recording population metrics at the requested
// steps. A non-finite loss stops the run with Status::Diverged; what was
// recorded before stays.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/metrics.hpp"
#include "optim.hpp"
#include "params.hpp"
#include "rng.hpp"

namespace fastmem {

// Outputs at the recorded steps (sorted, unique, in [0, steps], counted in
// updates done). Any pointer but steps may be null to skip that metric.
template <class T>
struct TrainRecord {
  const std::int64_t* steps = nullptr;
  index_t count = 0;
  T* loss = nullptr;       // count
  T* accuracy = nullptr;   // count
  T* margins = nullptr;    // count x N
  T* W = nullptr;          // count x d x d
  T* sharpness = nullptr;  // count
};

struct TrainResult {
  Status status = Status::Ok;
  index_t steps_done = 0;
  index_t records = 0;
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

template <class T>
TrainResult train(const Problem<T>& prob, MatrixView<T> W, const double* cdf, const std::int64_t* given_tokens,
                  const OptimizerParams& opt, OptimizerState<T>& state, const TrainParams& tp,
                  const TrainRecord<T>& rec) {
  const index_t N = prob.N(), d = prob.d(), b = tp.batch_size;
  FASTMEM_CHECK_ARG(W.rows == d && W.cols == d, "W must be d x d");
  FASTMEM_CHECK_ARG(b >= 0, "batch_size must be >= 0 (0: full batch)");
  FASTMEM_CHECK_ARG(b == 0 || given_tokens || cdf, "minibatch training needs a token CDF or given tokens");
  const bool plain_sgd = opt.is_plain_sgd();
  PassWorkspace<T> pass, metrics_ws;
  HvpWorkspace<T> hvp_ws;
  BatchAggregator agg;
  CounterRng rng(tp.seed);
  std::vector<std::int64_t> draws(static_cast<std::size_t>(b));
  std::vector<T> grad_buf(plain_sgd ? 0 : std::size_t(d * d));
  MatrixView<T> grad(grad_buf.data(), plain_sgd ? 0 : d, plain_sgd ? 0 : d);
  std::vector<T> full_weights(std::size_t(b == 0 ? N : 0));
  for (index_t x = 0; b == 0 && x < N; ++x) full_weights[x] = static_cast<T>(prob.p[x]);

  TrainResult res;
  auto record = [&](index_t t) {
    for (; res.records < rec.count && rec.steps[res.records] == t; ++res.records) {
      const index_t r = res.records;
      if (rec.loss || rec.accuracy || rec.margins) {
        const PopulationMetrics m = population_metrics(prob, MatrixView<const T>(W),
                                                       rec.margins ? rec.margins + r * N : nullptr,
                                                       MatrixView<T>(), metrics_ws);
        if (rec.loss) rec.loss[r] = static_cast<T>(m.loss);
        if (rec.accuracy) rec.accuracy[r] = static_cast<T>(m.accuracy);
        if (!std::isfinite(m.loss)) res.status = Status::Diverged;
      }
      if (rec.W)
        for (index_t i = 0; i < d; ++i) std::copy(W.row(i), W.row(i) + d, rec.W + (r * d + i) * d);
      if (rec.sharpness)
        rec.sharpness[r] = static_cast<T>(
            sharpness(prob, MatrixView<const T>(W), tp.power_iters, 1e-6, tp.seed, hvp_ws));
    }
  };

  for (index_t t = 0;; ++t) {
    record(t);
    res.steps_done = t;
    if (t == tp.steps || res.status != Status::Ok) break;
    const index_t gt = tp.start_step + t;
    const double lr = lr_at(opt, gt);
    const std::int64_t* tokens = nullptr;
    index_t rows = N;
    if (b == 0) {
      pass.w = full_weights;
    } else {
      if (given_tokens) {
        std::copy(given_tokens + t * b, given_tokens + (t + 1) * b, draws.begin());
      } else {
        const std::uint64_t base = std::uint64_t(gt) * std::uint64_t(b);
        for (index_t i = 0; i < b; ++i) draws[i] = sample_index(cdf, N, rng.uniform(base + i));
      }
      rows = agg.aggregate(draws.data(), b, N, pass.w);
      tokens = agg.distinct.data();
    }
    const double loss = forward_backward(prob, MatrixView<const T>(W), tokens, rows, pass);
    if (!std::isfinite(loss)) {
      res.status = Status::Diverged;
      break;
    }
    MatrixView<const T> H(pass.h.data(), rows, d);
    if (plain_sgd) {
      embed_write(prob.emb, tokens, pass.Eb, H, static_cast<T>(-lr), W);
    } else {
      for (index_t i = 0; i < d; ++i) std::fill(grad.row(i), grad.row(i) + d, T(0));
      embed_write(prob.emb, tokens, pass.Eb, H, T(1), grad);
      optimizer_step(opt, lr, MatrixView<const T>(grad), W, state);
    }
  }
  return res;
}

}  // namespace fastmem
