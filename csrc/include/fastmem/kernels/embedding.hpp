// The two sides of the memory for a set of tokens x_1..x_b, through the input embedding:
//   read:   Q_i = e_{x_i}^T W                       (b x d)
//   write:  W += alpha * sum_i e_{x_i} h_i^T        (the rank-b outer-product update)
// Dense embeddings go through GEMM. One-hot embeddings (e_x = s_x * unit(c_x),
// detected by the caller) read and write only the rows c_x of W.
#pragma once
#include <cstdint>

#include "../blas.hpp"
#include "../problem.hpp"
#include "../views.hpp"
#include "sgd_rank_update.hpp"

namespace fastmem {

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

// W[c_x] += alpha * s_x * h_i for one-hot embeddings: only b rows are touched.
template <class T>
void onehot_rank_update(MatrixView<T> W, const InputEmbedding<T>& emb, const std::int64_t* tokens,
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
    onehot_rank_update(W, emb, tokens, H, alpha);
  else
    sgd_rank_update(W, Eb, H, alpha);
}

}  // namespace fastmem
