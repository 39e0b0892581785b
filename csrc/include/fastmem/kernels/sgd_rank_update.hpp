// The rank-b outer-product update of the memory for dense embeddings (GEMM):
//   W += alpha * sum_i e_{x_i} h_i^T = alpha * Eb^T H
// (embedding.hpp chooses between it and the one-hot rows' update).
#pragma once
#include "../blas.hpp"
#include "../views.hpp"

namespace fastmem {

// W += alpha * Eb^T H.
template <class T>
void sgd_rank_update(MatrixView<T> W, MatrixView<const T> Eb, MatrixView<const T> H, T alpha) {
  blas::gemm<T>(true, false, alpha, Eb, H, T(1), W);
}

}  // namespace fastmem
