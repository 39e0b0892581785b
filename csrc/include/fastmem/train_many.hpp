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

namespace fastmem {

// One run: at each t = 0..steps the population loss of W; a non-finite loss ends the
// run as diverged, otherwise W -= lr * grad (not after the last). Same order of
// operations as train() with batch_size 0 and a record at the last step.
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
  std::int8_t status = 0;
  for (index_t t = 0;; ++t) {
    m = population_metrics(prob, MatrixView<const T>(W), static_cast<T*>(nullptr), t < P.steps ? G : MatrixView<T>(), ws);
    if (!std::isfinite(m.loss)) {
      status = 1;
      break;
    }
    if (t == P.steps) break;
    if (poller.stop()) {
      status = static_cast<std::int8_t>(Status::Interrupted);
      break;
    }
    for (index_t k = 0; k < d * d; ++k) W.ptr[k] -= lr * G.ptr[k];
  }
  P.loss[r] = static_cast<T>(m.loss);
  P.accuracy[r] = static_cast<T>(m.accuracy);
  P.status[r] = status;
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
