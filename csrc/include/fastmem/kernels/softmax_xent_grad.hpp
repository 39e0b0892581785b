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
// score costs the same 4 d flops as in an unchunked pass. Each thread owns a
// block of rows and runs both products of every chunk on it, so the softmax
// of a chunk overlaps the other threads' products.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../blas.hpp"
#include "../errors.hpp"
#include "../parallel.hpp"
#include "../views.hpp"

namespace fastmem {

// exp(x) for x <= 0 (or NaN, which stays NaN): Cephes' expf polynomial, within
// 2 ulp of std::exp, written so that the compiler vectorises the loops using it.
inline float exp_nonpositive(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : e * scale;
}
inline double exp_nonpositive(double x) { return std::exp(x); }

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

// Rows per tile of a thread's block. Measured on 2 cores, N = M = d = 2048: tiles of
// 128 / 256 / 512 / 4096 rows took 140 / 126 / 122 / 118 ms, against 114 ms for the
// two products alone, as re-packing U for every tile outweighs cache reuse.
constexpr index_t kRowTile = 4096;

namespace detail {

// Online softmax of one row's chunk s[0..cn): updates the running max / sum,
// rescales the row's accumulator, overwrites s with exp(s - max).
template <class T>
void online_softmax_row(T* s, index_t cn, index_t ly, double& run_max, double& run_sum, T& zy, T& zother,
                        T* acc, index_t d) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  T target = neg_inf;
  if (ly >= 0 && ly < cn) {
    target = s[ly];
    s[ly] = neg_inf;
    zy = target;
  }
  T omax = neg_inf;
#pragma omp simd reduction(max : omax)
  for (index_t j = 0; j < cn; ++j) omax = std::max(omax, s[j]);
  if (ly >= 0 && ly < cn) s[ly] = target;
  zother = std::max(zother, omax);
  // A NaN score is skipped by max() but still turns the sum into NaN below,
  // so a diverged row reads as NaN loss.
  const double m_new = std::max(run_max, double(std::max(omax, target)));
  const T mt = static_cast<T>(m_new);
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (index_t j = 0; j < cn; ++j) {
    const T e = exp_nonpositive(s[j] - mt);
    s[j] = e;
    sum += e;
  }
  if (run_max != -std::numeric_limits<double>::infinity() && m_new != run_max) {
    const double scale = std::exp(run_max - m_new);
    run_sum *= scale;
    const T sc = static_cast<T>(scale);
    for (index_t k = 0; k < d; ++k) acc[k] *= sc;
  }
  run_sum += double(sum);
  run_max = m_new;
}

}  // namespace detail

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

  parallel_blocks(b, threads_for(b, 2 * M * d), [&](int, index_t t0, index_t t1) {
    for (index_t r0 = t0; r0 < t1; r0 += kRowTile) {
      const index_t r1 = std::min(t1, r0 + kRowTile), rows = r1 - r0;
      MatrixView<const T> Qb = p.q.row_block(r0, rows);
      MatrixView<T> Hb = p.h.row_block(r0, rows);
      for (index_t i = r0; i < r1; ++i) {
        std::fill(p.h.row(i), p.h.row(i) + d, T(0));
        p.zother[i] = neg_inf;
        p.zy[i] = neg_inf;
      }
      for (index_t c0 = 0; c0 < M; c0 += chunk) {
        const index_t cn = std::min(chunk, M - c0);
        MatrixView<T> S(ws.scores.data() + r0 * chunk, rows, cn);
        MatrixView<const T> Uc = p.u.row_block(c0, cn);
        blas::gemm_serial<T>(false, true, T(1), Qb, Uc, T(0), S);
        for (index_t i = r0; i < r1; ++i)
          detail::online_softmax_row(S.row(i - r0), cn, p.y[i] - c0, ws.run_max[i], ws.run_sum[i], p.zy[i],
                                     p.zother[i], p.h.row(i), d);
        blas::gemm_serial<T>(false, false, T(1), MatrixView<const T>(S), Uc, T(1), Hb);
      }
      for (index_t i = r0; i < r1; ++i) {
        const double l = ws.run_sum[i];
        p.lse[i] = static_cast<T>(ws.run_max[i] + std::log(l));
        const T scale = static_cast<T>(1.0 / l), wi = p.w[i];
        const T* uy = p.u.row(p.y[i]);
        T* hi = p.h.row(i);
        for (index_t k = 0; k < d; ++k) hi[k] = wi * (hi[k] * scale - uy[k]);
      }
    }
  });
}

}  // namespace fastmem
