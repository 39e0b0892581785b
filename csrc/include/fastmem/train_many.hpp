// Many independent memories trained by full-batch GD in one call: the shape of a
// sweep, where parallelism over runs beats parallelism inside small products.
// Run r has its own E, U, W, p, y and learning rate; each thread owns whole runs.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "interrupt.hpp"
#include "kernels/metrics.hpp"
#include "parallel.hpp"
#include "train.hpp"

namespace fastmem {

// One run on drive(): at each t = 0..steps the population loss of W (a non-finite loss ends the
// run as diverged) and its gradient; a step is W -= lr * grad. Same order of operations as
// train() with batch_size 0 and a record at the last step.
template <class T>
void train_one_of_many(const TrainManyParams<T>& P, index_t r, PassWorkspace<T>& ws, std::vector<T>& grad,
                       StopPoller& poller) {
  const index_t N = P.N, M = P.M, d = P.d;
  Problem<T> prob;
  prob.emb.E = MatrixView<const T>(P.E + r * N * d, N, d);
  prob.U = MatrixView<const T>(P.U + r * M * d, M, d);
  prob.p = P.p + r * N;
  prob.y = P.y + r * N;
  MatrixView<T> W(P.W + r * d * d, d, d), G(grad.data(), d, d);
  const T lr = static_cast<T>(P.lr[r]);
  PopulationMetrics m;
  auto record = [&](index_t t, TrainResult& res) {
    m = population_metrics(prob, MatrixView<const T>(W), static_cast<T*>(nullptr), t < P.steps ? G : MatrixView<T>(),
                           ws);
    if (!std::isfinite(m.loss)) res.status = Status::Diverged;
  };
  auto step = [&](index_t) {
    for (index_t k = 0; k < d * d; ++k) W.ptr[k] -= lr * G.ptr[k];
    return true;
  };
  const TrainResult res = drive(P.steps, record, step, poller);
  P.loss[r] = static_cast<T>(m.loss);
  P.accuracy[r] = static_cast<T>(m.accuracy);
  P.status[r] = static_cast<std::int8_t>(res.status);
}

template <class T>
void train_many(const TrainManyParams<T>& P) {
  const index_t work = (P.steps + 1) * P.N * P.d * (P.d + P.M);
  StopPoller poller;  // polled by the calling thread (OpenMP's thread 0), seen by all
  parallel_blocks(P.R, threads_for(P.R, work), [&](int, index_t r0, index_t r1) {
    PassWorkspace<T> ws;
    std::vector<T> grad(std::size_t(P.d * P.d));
    for (index_t r = r0; r < r1; ++r) train_one_of_many(P, r, ws, grad, poller);
  });
}

}  // namespace fastmem
