// Trains a memory (N = 100 tokens, M = 5 outputs, d = 32, Zipf 2 tokens, SGD batch 16)
// with fastmem's C++ core and prints its population loss curve: one line "step loss".
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include <fastmem/fastmem.hpp>

int main() {
  using fastmem::index_t;
  const index_t N = 100, M = 5, d = 32, steps = 2000, batch = 16;
  std::mt19937_64 gen(0);
  std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(float(d)));
  std::vector<float> E(N * d), U(M * d), W(d * d, 0.0f);
  for (auto& e : E) e = normal(gen);
  for (auto& u : U) u = normal(gen);
  std::vector<double> p(N), cdf(N);
  std::vector<std::int64_t> y(N);
  double total = 0.0;
  for (index_t x = 0; x < N; ++x) total += p[x] = std::pow(double(x + 1), -2.0);
  for (index_t x = 0; x < N; ++x) {
    p[x] /= total;
    cdf[x] = (x ? cdf[x - 1] : 0.0) + p[x];
    y[x] = x % M;
  }
  cdf[N - 1] = 1.0;

  fastmem::Problem<float> prob;
  prob.emb.E = fastmem::MatrixView<const float>(E.data(), N, d);
  prob.U = fastmem::MatrixView<const float>(U.data(), M, d);
  prob.p = p.data();
  prob.y = y.data();

  fastmem::OptimizerParams opt;
  opt.lr = 1.0;
  fastmem::TrainParams tp;
  tp.steps = steps;
  tp.batch_size = batch;
  tp.seed = 42;
  std::vector<std::int64_t> rec_steps;
  for (index_t t = 0; t <= steps; t += 200) rec_steps.push_back(t);
  std::vector<float> loss(rec_steps.size()), acc(rec_steps.size());
  fastmem::TrainRecord<float> rec;
  rec.at = rec_steps.data();
  rec.count = index_t(rec_steps.size());
  rec.loss = loss.data();
  rec.accuracy = acc.data();
  fastmem::OptimizerState<float> state;

  const fastmem::TrainResult res = fastmem::train(prob, fastmem::MatrixView<float>(W.data(), d, d), cdf.data(),
                                                  nullptr, opt, state, tp, rec);
  for (index_t r = 0; r < res.records; ++r) std::printf("%lld %.6f\n", (long long)rec_steps[r], loss[r]);
  return res.status == fastmem::Status::Ok && loss.back() < loss.front() ? 0 : 1;
}
