// Correlation Mode Decomposition (Brokman et al., ICLR 2024): the passes over all
// P parameters of a trajectory, which reach P = 10^7. The clustering of a small
// sample of parameters that picks the reference series happens in Python.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../parallel.hpp"
#include "../views.hpp"

namespace fastmem {

template <class T>
struct CmdFitParams {
  MatrixView<const T> theta;          // T x P, a row per recorded step
  MatrixView<const double> refs;      // T x M, the reference parameter of each mode
  std::int64_t* mode;                 // P, out: argmax_m |Pearson(theta_i, r_m)|
  double* a;                          // P, out: least squares theta_i(t) ~ a_i r_mode(t) + b_i
  double* b;                          // P, out
  double* corr;                       // P, out (nullable): |Pearson| with the chosen reference
};

// Assignment and per-parameter least squares in one pass over the trajectory,
// a block of parameters at a time (two sweeps over T: mean, then centred moments).
template <class T>
void cmd_assign_fit(const CmdFitParams<T>& p) {
  const index_t Tn = p.theta.rows, P = p.theta.cols, M = p.refs.cols;
  std::vector<double> rc(std::size_t(Tn * M)), rmean(std::size_t(M), 0.0), rnorm2(std::size_t(M), 0.0);
  for (index_t t = 0; t < Tn; ++t)
    for (index_t m = 0; m < M; ++m) rmean[m] += p.refs(t, m) / double(Tn);
  for (index_t t = 0; t < Tn; ++t)
    for (index_t m = 0; m < M; ++m) {
      const double v = p.refs(t, m) - rmean[m];
      rc[t * M + m] = v;
      rnorm2[m] += v * v;
    }
  constexpr index_t kBlock = 512;
  const index_t blocks = (P + kBlock - 1) / kBlock;
  parallel_blocks(blocks, threads_for(blocks, kBlock * Tn * (M + 2)), [&](int, index_t b0, index_t b1) {
    std::vector<double> mean(kBlock), ss(kBlock), dot(static_cast<std::size_t>(kBlock * M));
    for (index_t blk = b0; blk < b1; ++blk) {
      const index_t i0 = blk * kBlock, n = std::min(kBlock, P - i0);
      std::fill(mean.begin(), mean.end(), 0.0);
      std::fill(ss.begin(), ss.end(), 0.0);
      std::fill(dot.begin(), dot.end(), 0.0);
      for (index_t t = 0; t < Tn; ++t) {
        const T* row = p.theta.row(t) + i0;
        for (index_t j = 0; j < n; ++j) mean[j] += double(row[j]);
      }
      for (index_t j = 0; j < n; ++j) mean[j] /= double(Tn);
      for (index_t t = 0; t < Tn; ++t) {
        const T* row = p.theta.row(t) + i0;
        const double* r = rc.data() + t * M;
        for (index_t j = 0; j < n; ++j) {
          const double x = double(row[j]) - mean[j];
          ss[j] += x * x;
          double* dj = dot.data() + j * M;
          for (index_t m = 0; m < M; ++m) dj[m] += x * r[m];
        }
      }
      for (index_t j = 0; j < n; ++j) {
        const double* dj = dot.data() + j * M;
        index_t best = 0;
        double best_c = -1.0;
        for (index_t m = 0; m < M; ++m) {
          const double den = std::sqrt(ss[j] * rnorm2[m]);
          const double c = den > 0.0 ? std::fabs(dj[m]) / den : 0.0;  // a constant series correlates 0
          if (c > best_c) {
            best_c = c;
            best = m;
          }
        }
        const index_t i = i0 + j;
        p.mode[i] = best;
        p.a[i] = rnorm2[best] > 0.0 ? dj[best] / rnorm2[best] : 0.0;
        p.b[i] = mean[j] - p.a[i] * rmean[best];
        if (p.corr) p.corr[i] = best_c;
      }
    }
  });
}

// Recursive least squares of online CMD, in Welford's centred form: after n
// steps, theta_mean and co (= sum (theta - mean)(r - r_mean)) per parameter,
// r_mean and r_m2 per mode, give a = co / r_m2, b = theta_mean - a r_mean, equal
// to batch least squares over the n steps. One call adds step n + 1.
template <class T>
void cmd_online_update(const T* theta_t, index_t P, const double* r_t, index_t M, const std::int64_t* mode,
                       index_t n, double* r_mean, double* r_m2, double* theta_mean, double* co) {
  const double n1 = double(n + 1), inv_n1 = 1.0 / n1;
  std::vector<double> dr(static_cast<std::size_t>(M));
  for (index_t m = 0; m < M; ++m) {
    dr[m] = r_t[m] - r_mean[m];
    r_mean[m] += dr[m] / n1;
    r_m2[m] += dr[m] * (r_t[m] - r_mean[m]);
  }
#pragma omp parallel for schedule(static) if (P > 65536) num_threads(max_threads())
  for (index_t i = 0; i < P; ++i) {
    const double x = double(theta_t[i]);
    theta_mean[i] += (x - theta_mean[i]) * inv_n1;
    co[i] += dr[mode[i]] * (x - theta_mean[i]);
  }
}

}  // namespace fastmem
