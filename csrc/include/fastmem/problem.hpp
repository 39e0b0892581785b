// The associative memory's problem as the kernels and drivers see it: the input embedding
// (dense E, or one-hot rows e_x = s_x unit(c_x) that touch only row c_x of W), the output
// embeddings, the token distribution and targets. Kept apart from the kernels that use it.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "views.hpp"

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

template <class T>
struct Problem {
  InputEmbedding<T> emb;    // N x d input embeddings
  MatrixView<const T> U;    // M x d output embeddings
  const double* p = nullptr;        // N token probabilities
  const std::int64_t* y = nullptr;  // N targets in [0, M)
  bool layernorm = false;
  index_t chunk = 0;
  index_t N() const { return emb.E.rows; }
  index_t d() const { return emb.E.cols; }
  index_t M() const { return U.rows; }
};

}  // namespace fastmem
