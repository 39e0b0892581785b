// The two sides of the memory for a set of tokens x_1..x_b:
//   read:   Q_i = e_{x_i}^T W                       (b x d)
//   write:  W += alpha * sum_i e_{x_i} h_i^T        (the rank-b outer-product update)
// Dense embeddings go through GEMM. One-hot embeddings (e_x = s_x * unit(c_x),
// detected by the caller) read and write only the rows c_x of W.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include <cmath>

#include "../blas.hpp"
#include "../parallel.hpp"
#include "../views.hpp"

namespace fastmem {

template <class T>
struct InputEmbedding {
  MatrixView<const T> E;                  // N x d
  const std::int64_t* onehot_col = nullptr;  // N, or null for dense E
  const T* onehot_scale = nullptr;        // N

  bool onehot() const { return onehot_col != nullptr; }
};

// Eb = E[tokens] for dense embeddings; a full batch (tokens == null) uses E itself.
template <class T>
MatrixView<const T> gather_rows(const InputEmbedding<T>& emb, const std::int64_t* tokens, index_t b,
                                std::vector<T>& buffer) {
  if (tokens == nullptr) return emb.E;
  const index_t d = emb.E.cols;
  buffer.resize(std::size_t(b) * std::size_t(d));
  for (index_t i = 0; i < b; ++i) std::copy(emb.E.row(tokens[i]), emb.E.row(tokens[i]) + d, buffer.data() + i * d);
  return MatrixView<const T>(buffer.data(), b, d);
}

inline std::int64_t token_at(const std::int64_t* tokens, index_t i) { return tokens ? tokens[i] : i; }

// Q = E[tokens] W. Eb is gather_rows() of the same tokens (ignored when one-hot).
template <class T>
void embed_read(const InputEmbedding<T>& emb, const std::int64_t* tokens, MatrixView<const T> Eb,
                MatrixView<const T> W, MatrixView<T> Q) {
  if (!emb.onehot()) {
    blas::gemm<T>(false, false, T(1), Eb, W, T(0), Q);
    return;
  }
  const index_t d = W.cols;
  for (index_t i = 0; i < Q.rows; ++i) {
    const std::int64_t x = token_at(tokens, i);
    const T s = emb.onehot_scale[x];
    const T* w = W.row(emb.onehot_col[x]);
    T* q = Q.row(i);
    for (index_t k = 0; k < d; ++k) q[k] = s * w[k];
  }
}

// W += alpha * Eb^T H.
template <class T>
void sgd_rank_update(MatrixView<T> W, MatrixView<const T> Eb, MatrixView<const T> H, T alpha) {
  blas::gemm<T>(true, false, alpha, Eb, H, T(1), W);
}

// The normalised update of Adam with betas (0, 0), W <- decay W - lr g / (|g| + eps) with
// g = Eb^T H, a block of W's rows at a time: the d x d gradient is never stored, so W is
// read and written once (the update is memory-bound at large d).
template <class T>
void normalized_rank_update(MatrixView<T> W, MatrixView<const T> Eb, MatrixView<const T> H, T lr, T eps, T decay) {
  constexpr index_t kRows = 16;
  const index_t d = W.rows, cols = W.cols;
  const index_t blocks = (d + kRows - 1) / kRows;
  parallel_blocks(blocks, threads_for(blocks, kRows * cols * Eb.rows), [&](int, index_t b0, index_t b1) {
    std::vector<T> g(std::size_t(kRows * cols));
    for (index_t blk = b0; blk < b1; ++blk) {
      const index_t r0 = blk * kRows, n = std::min(kRows, d - r0);
      MatrixView<T> G(g.data(), n, cols);
      blas::gemm_serial<T>(true, false, T(1), MatrixView<const T>(Eb.ptr + r0, Eb.rows, n, Eb.stride), H, T(0), G);
      for (index_t i = 0; i < n; ++i) {
        T* w = W.row(r0 + i);
        const T* gi = G.row(i);
        for (index_t k = 0; k < cols; ++k) w[k] = decay * w[k] - lr * gi[k] / (std::fabs(gi[k]) + eps);
      }
    }
  });
}

// W[c_x] += alpha * s_x * h_i for one-hot embeddings: only b rows are touched.
template <class T>
void sgd_row_update(MatrixView<T> W, const InputEmbedding<T>& emb, const std::int64_t* tokens,
                    MatrixView<const T> H, T alpha) {
  const index_t d = W.cols;
  for (index_t i = 0; i < H.rows; ++i) {
    const std::int64_t x = token_at(tokens, i);
    const T a = alpha * emb.onehot_scale[x];
    const T* h = H.row(i);
    T* w = W.row(emb.onehot_col[x]);
    for (index_t k = 0; k < d; ++k) w[k] += a * h[k];
  }
}

// W += alpha * E[tokens]^T H, by whichever of the two paths fits the embedding.
template <class T>
void embed_write(const InputEmbedding<T>& emb, const std::int64_t* tokens, MatrixView<const T> Eb,
                 MatrixView<const T> H, T alpha, MatrixView<T> W) {
  if (emb.onehot())
    sgd_row_update(W, emb, tokens, H, alpha);
  else
    sgd_rank_update(W, Eb, H, alpha);
}

}  // namespace fastmem
