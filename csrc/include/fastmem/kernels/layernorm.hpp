// LayerNorm on the memory read-out, as in the scaling-law experiments:
//   h = q / r,  r = sqrt(|q|^2 + eps)
// and its backward: dL/dq = (g - h (h . g)) / r, with g = dL/dh.
#pragma once
#include <cmath>

#include "../constants.hpp"
#include "../simd.hpp"
#include "../views.hpp"

namespace fastmem {

// In place: Q <- Q / r row-wise; r (b) is kept for the backward.
template <class T>
void layernorm_forward(MatrixView<T> Q, T* r) {
  const index_t d = Q.cols;
  for (index_t i = 0; i < Q.rows; ++i) {
    T* q = Q.row(i);
    const double ri = std::sqrt(simd::dot_double(q, q, d) + kLayerNormEps);
    r[i] = static_cast<T>(ri);
    const T inv = static_cast<T>(1.0 / ri);
    for (index_t k = 0; k < d; ++k) q[k] *= inv;
  }
}

// In place: G <- (G - Hn (Hn . G)) / r row-wise; Hn is the normalised read-out.
template <class T>
void layernorm_backward(MatrixView<const T> Hn, const T* r, MatrixView<T> G) {
  const index_t d = G.cols;
  for (index_t i = 0; i < G.rows; ++i) {
    const T* h = Hn.row(i);
    T* g = G.row(i);
    const T hg = static_cast<T>(simd::dot_double(h, g, d)), inv = T(1) / r[i];
    for (index_t k = 0; k < d; ++k) g[k] = (g[k] - h[k] * hg) * inv;
  }
}

}  // namespace fastmem
