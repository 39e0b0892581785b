// Fused scores -> softmax -> cross-entropy -> gradient for a block of tokens.
//
// For each row i of Q (b x d, the rows e_x^T W) and the output embeddings U
// (M x d), with z_i = Q_i U^T:
//   lse_i    = logsumexp(z_i)
//   zy_i     = z_i[y_i]
//   zother_i = max_{k != y_i} z_i[k]
//   H_i      = w_i (softmax(z_i) U - u_{y_i})       (= G_i U, G the residual)
// The output tokens are streamed in chunks with an online log-sum-exp (the
// running sum of exp(z - max) U is rescaled whenever the running max grows),
// so the b x M score block is never stored: memory is O(b * chunk), and each
// score costs the same 4 d flops as in an unchunked pass.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../blas.hpp"
#include "../errors.hpp"
#include "../views.hpp"

namespace fastmem {

template <class T>
struct SoftmaxXentGradParams {
  MatrixView<const T> q;  // b x d
  MatrixView<const T> u;  // M x d
  const std::int64_t* y;  // b targets in [0, M)
  const T* w;             // b row weights
  MatrixView<T> h;        // b x d, out
  T* lse;                 // b, out
  T* zy;                  // b, out
  T* zother;              // b, out
  index_t chunk = 0;      // output tokens per chunk; 0 picks default_chunk()
};

// Scratch reused across calls so that a training loop allocates nothing per step.
template <class T>
struct SoftmaxXentWorkspace {
  std::vector<T> scores;
  std::vector<double> run_max, run_sum;
};

// The whole score block when it is small (one pass, no rescaling), otherwise
// chunks whose b x chunk block stays within a 16 MiB budget.
inline index_t default_chunk(index_t b, index_t M, std::size_t elem_size) {
  constexpr std::size_t kBudget = std::size_t(16) << 20;
  if (std::size_t(b) * std::size_t(M) * elem_size <= kBudget) return std::max<index_t>(M, 1);
  index_t c = static_cast<index_t>(kBudget / (std::size_t(std::max<index_t>(b, 1)) * elem_size));
  c = std::max<index_t>(256, c / 64 * 64);
  return std::min(c, M);
}

template <class T>
void softmax_xent_grad(const SoftmaxXentGradParams<T>& p, SoftmaxXentWorkspace<T>& ws) {
  const index_t b = p.q.rows, d = p.q.cols, M = p.u.rows;
  FASTMEM_CHECK_ARG(p.u.cols == d, "U must have d columns, the width of Q");
  FASTMEM_CHECK_ARG(p.h.rows == b && p.h.cols == d, "H must be b x d");
  FASTMEM_CHECK_ARG(M >= 1, "U must have at least one row");
  if (b == 0) return;
  const index_t chunk = p.chunk > 0 ? std::min(p.chunk, M) : default_chunk(b, M, sizeof(T));
  ws.scores.resize(std::size_t(b) * std::size_t(chunk));
  ws.run_max.assign(std::size_t(b), -std::numeric_limits<double>::infinity());
  ws.run_sum.assign(std::size_t(b), 0.0);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (index_t i = 0; i < b; ++i) {
    std::fill(p.h.row(i), p.h.row(i) + d, T(0));
    p.zother[i] = neg_inf;
    p.zy[i] = neg_inf;
  }

  for (index_t c0 = 0; c0 < M; c0 += chunk) {
    const index_t cn = std::min(chunk, M - c0);
    MatrixView<T> S(ws.scores.data(), b, cn);
    MatrixView<const T> Uc = p.u.row_block(c0, cn);
    blas::gemm<T>(false, true, T(1), p.q, Uc, T(0), S);

#pragma omp parallel for schedule(static) if (b * cn > 32768)
    for (index_t i = 0; i < b; ++i) {
      T* s = S.row(i);
      const index_t ly = p.y[i] - c0;  // target's column in this chunk, if inside
      T cmax = neg_inf, omax = p.zother[i];
      for (index_t j = 0; j < cn; ++j) {
        const T v = s[j];
        cmax = std::max(cmax, v);
        if (j != ly) omax = std::max(omax, v);
      }
      if (ly >= 0 && ly < cn) p.zy[i] = s[ly];
      p.zother[i] = omax;
      const double m_old = ws.run_max[i];
      // A NaN score is skipped by max() but still turns the sum into NaN below,
      // so a diverged row reads as NaN loss.
      const double m_new = std::max(m_old, double(cmax));
      const T mt = static_cast<T>(m_new);
      double sum = 0.0;
      for (index_t j = 0; j < cn; ++j) {
        const T e = std::exp(s[j] - mt);
        s[j] = e;
        sum += e;
      }
      if (m_old != -std::numeric_limits<double>::infinity() && m_new != m_old) {
        const double scale = std::exp(m_old - m_new);
        ws.run_sum[i] *= scale;
        T* hi = p.h.row(i);
        for (index_t k = 0; k < d; ++k) hi[k] *= static_cast<T>(scale);
      }
      ws.run_sum[i] += sum;
      ws.run_max[i] = m_new;
    }
    blas::gemm<T>(false, false, T(1), MatrixView<const T>(S), Uc, T(1), p.h);
  }

#pragma omp parallel for schedule(static) if (b * d > 32768)
  for (index_t i = 0; i < b; ++i) {
    const double l = ws.run_sum[i];
    p.lse[i] = static_cast<T>(ws.run_max[i] + std::log(l));
    const T scale = static_cast<T>(1.0 / l), wi = p.w[i];
    const T* uy = p.u.row(p.y[i]);
    T* hi = p.h.row(i);
    for (index_t k = 0; k < d; ++k) hi[k] = wi * (hi[k] * scale - uy[k]);
  }
}

}  // namespace fastmem
