// The dual ("particle") representation: with E and U fixed and an optimizer
// linear in the gradient, every iterate is W_t = c_t W_0 - E^T A_t U (A: N x M),
// so the scores Z_t = E W_t U^T = c_t Z_0 - K_E A_t K_U evolve without W:
//   GD step:   Z -= eta K_E G K_U                    O(N^2 M + N M^2)
//   SGD step:  Z -= eta K_E[:, x_b] (G_b K_U)        O(b N M + b M^2)
// with K_E = E E^T, K_U = U U^T computed once. A diagonal Gram (orthogonal
// embeddings, detected) turns each product into a row scaling: O(N M) per GD
// step, O(b M) per SGD step.
// With LayerNorm the scores are not linear in W, but the read-outs Q = E W are:
// W_t = c_t W_0 - E^T A_t with A (N x d), and an SGD step is
//   Q -= eta K_E[:, x_b] dQ_b,   dQ_b = LN-backward(G_b U)        O(b N d + b M d)
// the same update with K_U replaced by the identity on d columns.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../blas.hpp"
#include "../parallel.hpp"
#include "../views.hpp"
#include "embedding.hpp"
#include "softmax_xent_grad.hpp"

namespace fastmem {

// A Gram matrix, or its diagonal when every off-diagonal entry is exactly zero.
template <class T>
struct Gram {
  MatrixView<const T> K;      // n x n (dense case)
  const T* diag = nullptr;    // n (diagonal case)
  bool diagonal() const { return diag != nullptr; }
};

// K = X X^T into `dense`; if it is diagonal, `diag` receives the diagonal and
// the returned Gram points at it.
template <class T>
Gram<T> make_gram(MatrixView<const T> X, std::vector<T>& dense, std::vector<T>& diag) {
  const index_t n = X.rows;
  dense.resize(std::size_t(n * n));
  MatrixView<T> K(dense.data(), n, n);
  blas::gemm<T>(false, true, T(1), X, X, T(0), K);
  bool is_diag = true;
  for (index_t i = 0; i < n && is_diag; ++i)
    for (index_t j = 0; j < n; ++j)
      if (i != j && K(i, j) != T(0)) {
        is_diag = false;
        break;
      }
  Gram<T> g;
  g.K = K;
  if (is_diag) {
    diag.resize(std::size_t(n));
    for (index_t i = 0; i < n; ++i) diag[i] = K(i, i);
    g.diag = diag.data();
  }
  return g;
}

// Residual rows G_i = w_i (softmax(Z[x_i]) - onehot(y(x_i))) of the given tokens
// (null: all N) and the loss sum_i w_i l(Z[x_i]). Also used for the metrics.
template <class T>
double dual_residual(MatrixView<const T> Z, const std::int64_t* y, const std::int64_t* tokens, index_t b,
                     const T* w, MatrixView<T> G, T* margins) {
  const index_t M = Z.cols;
  double loss = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : loss) if (b * M > 65536) num_threads(max_threads())
  for (index_t i = 0; i < b; ++i) {
    const std::int64_t x = token_at(tokens, i);
    const T* z = Z.row(x);
    const std::int64_t yx = y[x];
    T zmax = -std::numeric_limits<T>::infinity(), zother = zmax;
    for (index_t k = 0; k < M; ++k) {
      zmax = std::max(zmax, z[k]);
      if (k != yx) zother = std::max(zother, z[k]);
    }
    T sum = T(0);
#pragma omp simd reduction(+ : sum)
    for (index_t k = 0; k < M; ++k) sum += exp_nonpositive(z[k] - zmax);
    const T lse = zmax + std::log(sum);
    loss += double(w[i]) * (double(lse) - double(z[yx]));
    if (margins) margins[i] = z[yx] - zother;
    if (!G.empty()) {
      T* g = G.row(i);
      const T wi = w[i];
#pragma omp simd
      for (index_t k = 0; k < M; ++k) g[k] = wi * exp_nonpositive(z[k] - lse);
      g[yx] -= wi;
    }
  }
  return loss;
}

template <class T>
struct DualWorkspace {
  std::vector<T> g, gk, ke_rows;
};

// out += alpha * K_E[:, tokens] (G K_U), with G (b x M) the residual rows of the
// tokens (null: all N), out an N x M score-space matrix (Z or the velocity).
template <class T>
void dual_scores_update(const Gram<T>& KE, const Gram<T>& KU, const std::int64_t* tokens, MatrixView<const T> G,
                        T alpha, MatrixView<T> out, DualWorkspace<T>& ws) {
  const index_t b = G.rows, M = G.cols, N = out.rows;
  ws.gk.resize(std::size_t(b * M));
  MatrixView<T> GK(ws.gk.data(), b, M);
  if (KU.diagonal()) {
    for (index_t i = 0; i < b; ++i)
      for (index_t k = 0; k < M; ++k) GK(i, k) = G(i, k) * KU.diag[k];
  } else {
    blas::gemm<T>(false, false, T(1), G, KU.K, T(0), GK);
  }
  if (KE.diagonal()) {
    for (index_t i = 0; i < b; ++i) {
      const std::int64_t x = token_at(tokens, i);
      const T a = alpha * KE.diag[x];
      T* o = out.row(x);
      for (index_t k = 0; k < M; ++k) o[k] += a * GK(i, k);
    }
  } else if (tokens == nullptr) {
    blas::gemm<T>(false, false, alpha, KE.K, MatrixView<const T>(GK), T(1), out);
  } else {
    // K_E is symmetric: its columns x_b are its rows x_b.
    ws.ke_rows.resize(std::size_t(b * N));
    for (index_t i = 0; i < b; ++i) std::copy(KE.K.row(tokens[i]), KE.K.row(tokens[i]) + N, ws.ke_rows.data() + i * N);
    blas::gemm<T>(true, false, alpha, MatrixView<const T>(ws.ke_rows.data(), b, N), MatrixView<const T>(GK), T(1),
                  out);
  }
}

// rows[x_i] += alpha * G_i (an N x M coefficient matrix: A or the momentum B).
template <class T>
void dual_rows_add(const std::int64_t* tokens, MatrixView<const T> G, T alpha, MatrixView<T> rows) {
  for (index_t i = 0; i < G.rows; ++i) {
    T* r = rows.row(token_at(tokens, i));
    const T* g = G.row(i);
    for (index_t k = 0; k < G.cols; ++k) r[k] += alpha * g[k];
  }
}

template <class T>
void scale_all(MatrixView<T> X, T s) {
  for (index_t i = 0; i < X.rows; ++i)
    for (index_t k = 0; k < X.cols; ++k) X(i, k) *= s;
}

// W = c W0 - E^T (A U), A U computed into `au` (N x d); with U empty, A is already
// N x d (the read-out state of the LayerNorm model) and W = c W0 - E^T A.
template <class T>
void dual_rebuild_W(const InputEmbedding<T>& emb, MatrixView<const T> U, MatrixView<const T> W0, double c,
                    MatrixView<const T> A, MatrixView<T> W, std::vector<T>& au) {
  const index_t N = A.rows, d = W.cols;
  MatrixView<const T> AU = A;
  if (!U.empty()) {
    au.resize(std::size_t(N * d));
    blas::gemm<T>(false, false, T(1), A, U, T(0), MatrixView<T>(au.data(), N, d));
    AU = MatrixView<const T>(au.data(), N, d);
  }
  for (index_t i = 0; i < d; ++i)
    for (index_t j = 0; j < d; ++j) W(i, j) = static_cast<T>(c) * W0(i, j);
  embed_write(emb, nullptr, emb.E, AU, T(-1), W);
}

}  // namespace fastmem
