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

// E[tokens]^T (d x b; tokens == null: all N rows in order), the left factor's layout of
// normalized_rank_update.
template <class T>
MatrixView<const T> gather_columns(MatrixView<const T> E, const std::int64_t* tokens, index_t b,
                                   std::vector<T>& buffer) {
  const index_t d = E.cols;
  buffer.resize(std::size_t(b) * std::size_t(d));
  for (index_t r = 0; r < b; ++r) {
    const T* e = E.row(tokens ? tokens[r] : r);
    for (index_t i = 0; i < d; ++i) buffer[i * b + r] = e[i];
  }
  return MatrixView<const T>(buffer.data(), d, b);
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
