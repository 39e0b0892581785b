// Population metrics of a memory: loss, p-weighted accuracy, per-token margins,
// the gradient, and the top Hessian eigenvalue by power iteration on
// Hessian-vector products (the d^2 x d^2 Hessian is never formed).
#pragma once
#include <cmath>
#include <vector>

#include "../parallel.hpp"
#include "../rng.hpp"
#include "embedding.hpp"
#include "forward_backward.hpp"

namespace fastmem {

struct PopulationMetrics {
  double loss = 0.0;
  double accuracy = 0.0;
};

// margins (N, nullable) and grad (d x d, empty to skip) are outputs.
template <class T>
PopulationMetrics population_metrics(const Problem<T>& prob, MatrixView<const T> W, T* margins, MatrixView<T> grad,
                                     PassWorkspace<T>& ws) {
  const index_t N = prob.N();
  ws.w.resize(std::size_t(N));
  for (index_t x = 0; x < N; ++x) ws.w[x] = static_cast<T>(prob.p[x]);
  PopulationMetrics out;
  out.loss = forward_backward(prob, W, nullptr, N, ws);
  for (index_t x = 0; x < N; ++x) {
    const T m = ws.zy[x] - ws.zother[x];
    if (margins) margins[x] = m;
    if (m > T(0)) out.accuracy += prob.p[x];
  }
  if (!grad.empty()) {
    for (index_t i = 0; i < grad.rows; ++i) std::fill(grad.row(i), grad.row(i) + grad.cols, T(0));
    embed_write(prob.emb, nullptr, ws.Eb, MatrixView<const T>(ws.H(N, prob.d())), T(1), grad);
  }
  return out;
}

// Hessian-vector product of the population loss (no LayerNorm) at W:
//   HV = E^T [p * (s * D - s (s . D))] U,  D = E V U^T, s = softmax(E W U^T),
// streamed over chunks of output tokens like softmax_xent_grad.
template <class T>
struct HvpWorkspace {
  PassWorkspace<T> pass;
  std::vector<T> sbar, r, acc, t, s, dz;
};

template <class T>
void hvp_prepare(const Problem<T>& prob, MatrixView<const T> W, HvpWorkspace<T>& ws) {
  const index_t N = prob.N(), d = prob.d();
  ws.pass.w.assign(std::size_t(N), T(1));
  forward_backward(prob, W, nullptr, N, ws.pass);
  ws.sbar.resize(std::size_t(N * d));
  for (index_t x = 0; x < N; ++x) {
    const T* uy = prob.U.row(prob.y[x]);
    const T* hx = ws.pass.h.data() + x * d;
    for (index_t k = 0; k < d; ++k) ws.sbar[x * d + k] = hx[k] + uy[k];
  }
}

template <class T>
void hvp(const Problem<T>& prob, MatrixView<const T> V, MatrixView<T> out, HvpWorkspace<T>& ws) {
  const index_t N = prob.N(), d = prob.d(), M = prob.M();
  const index_t chunk = prob.chunk > 0 ? std::min(prob.chunk, M) : default_chunk(N, M, 2 * sizeof(T));
  ws.r.resize(std::size_t(N * d));
  ws.acc.assign(std::size_t(N * d), T(0));
  ws.t.assign(std::size_t(N), T(0));
  ws.s.resize(std::size_t(N * chunk));
  ws.dz.resize(std::size_t(N * chunk));
  MatrixView<T> R(ws.r.data(), N, d), Acc(ws.acc.data(), N, d);
  MatrixView<const T> Q(ws.pass.q.data(), N, d);
  embed_read(prob.emb, nullptr, ws.pass.Eb, V, R);
  for (index_t c0 = 0; c0 < M; c0 += chunk) {
    const index_t cn = std::min(chunk, M - c0);
    MatrixView<const T> Uc = prob.U.row_block(c0, cn);
    MatrixView<T> S(ws.s.data(), N, cn), D(ws.dz.data(), N, cn);
    blas::gemm<T>(false, true, T(1), Q, Uc, T(0), S);
    blas::gemm<T>(false, true, T(1), MatrixView<const T>(R), Uc, T(0), D);
#pragma omp parallel for schedule(static) if (N * cn > 32768) num_threads(max_threads())
    for (index_t x = 0; x < N; ++x) {
      const T lse = ws.pass.lse[x];
      T* s = S.row(x);
      const T* dz = D.row(x);
      T sum = T(0);
      for (index_t j = 0; j < cn; ++j) {
        s[j] = exp_nonpositive(s[j] - lse) * dz[j];
        sum += s[j];
      }
      ws.t[x] += sum;
    }
    blas::gemm<T>(false, false, T(1), MatrixView<const T>(S), Uc, T(1), Acc);
  }
  for (index_t x = 0; x < N; ++x) {
    const T px = static_cast<T>(prob.p[x]);
    for (index_t k = 0; k < d; ++k) Acc(x, k) = px * (Acc(x, k) - ws.t[x] * ws.sbar[x * d + k]);
  }
  for (index_t i = 0; i < d; ++i) std::fill(out.row(i), out.row(i) + d, T(0));
  embed_write(prob.emb, nullptr, ws.pass.Eb, MatrixView<const T>(Acc), T(1), out);
}

// Top eigenvalue of the (positive semi-definite) Hessian: power iteration from
// a seeded random direction until the residual ||Hv - lambda v|| <= tol |lambda|.
template <class T>
double sharpness(const Problem<T>& prob, MatrixView<const T> W, index_t iters, double tol, std::uint64_t seed,
                 HvpWorkspace<T>& ws) {
  FASTMEM_CHECK_ARG(!prob.layernorm, "sharpness is implemented for the model without LayerNorm");
  const index_t d = prob.d();
  hvp_prepare(prob, W, ws);
  std::vector<T> v(std::size_t(d * d)), hv(std::size_t(d * d));
  CounterRng rng(seed);
  double nrm = 0.0;
  for (index_t i = 0; i < d * d; ++i) {
    v[i] = static_cast<T>(rng.uniform(std::uint64_t(i)) - 0.5);
    nrm += double(v[i]) * double(v[i]);
  }
  double lam = 0.0;
  for (index_t it = 0; it < iters; ++it) {
    const T inv = static_cast<T>(1.0 / std::sqrt(nrm));
    for (auto& e : v) e *= inv;
    hvp(prob, MatrixView<const T>(v.data(), d, d), MatrixView<T>(hv.data(), d, d), ws);
    double rq = 0.0;
    nrm = 0.0;
    for (index_t i = 0; i < d * d; ++i) {
      rq += double(v[i]) * double(hv[i]);
      nrm += double(hv[i]) * double(hv[i]);
    }
    // ||Hv - rq v||^2 = ||Hv||^2 - rq^2 for a unit v: a small residual bounds the
    // eigenvalue error by residual^2 / gap, unlike a small change of rq.
    const bool converged = std::sqrt(std::max(nrm - rq * rq, 0.0)) <= tol * std::fabs(rq);
    lam = rq;
    if (nrm == 0.0 || converged) break;
    v.swap(hv);
  }
  return lam;
}

}  // namespace fastmem
