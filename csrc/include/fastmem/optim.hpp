// Optimizers as pure functions on views. Weight decay is decoupled for all of
// them: W <- (1 - lr * weight_decay) W - lr * update(grad), which for plain SGD is
// the same as adding weight_decay * W to the gradient.
#pragma once
#include <cmath>

#include "parallel.hpp"
#include "params.hpp"
#include "views.hpp"

namespace fastmem {

// Caller-owned moments: m is SGD's momentum buffer or Adam's first moment, v
// Adam's second moment (each d x d, zero-initialised; empty when unused).
// t counts the steps already taken (Adam's bias correction).
template <class T>
struct OptimizerState {
  MatrixView<T> m;
  MatrixView<T> v;
  index_t t = 0;
};

template <class T>
void optimizer_step(const OptimizerParams& o, double lr, MatrixView<const T> grad, MatrixView<T> W,
                    OptimizerState<T>& st) {
  st.t += 1;
  const index_t rows = W.rows, cols = W.cols;
  const T decay = static_cast<T>(1.0 - lr * o.weight_decay), lrt = static_cast<T>(lr);
  const double bc1 = 1.0 - std::pow(o.beta1, double(st.t)), bc2 = 1.0 - std::pow(o.beta2, double(st.t));
  const T mu = static_cast<T>(o.momentum), b1 = static_cast<T>(o.beta1), b2 = static_cast<T>(o.beta2);
  const T step_size = static_cast<T>(lr / bc1), inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(bc2));
  const T eps = static_cast<T>(o.eps);
#pragma omp parallel for schedule(static) if (rows * cols > 65536) num_threads(max_threads())
  for (index_t i = 0; i < rows; ++i) {
    const T* g = grad.row(i);
    T* w = W.row(i);
    switch (o.kind) {
      case OptimizerKind::SGD:
        if (o.momentum != 0.0) {
          T* m = st.m.row(i);
          for (index_t j = 0; j < cols; ++j) {
            m[j] = mu * m[j] + g[j];
            w[j] = decay * w[j] - lrt * m[j];
          }
        } else {
          for (index_t j = 0; j < cols; ++j) w[j] = decay * w[j] - lrt * g[j];
        }
        break;
      case OptimizerKind::Adam: {
        if (o.is_normalized_adam()) {
          // betas (0, 0): m = g, v = g^2, no bias correction: the normalised update
          // g / (|g| + eps), without a pass over m and v
          for (index_t j = 0; j < cols; ++j) w[j] = decay * w[j] - lrt * g[j] / (std::fabs(g[j]) + eps);
          break;
        }
        T* m = st.m.row(i);
        T* v = st.v.row(i);
        for (index_t j = 0; j < cols; ++j) {
          m[j] = b1 * m[j] + (T(1) - b1) * g[j];
          v[j] = b2 * v[j] + (T(1) - b2) * g[j] * g[j];
          w[j] = decay * w[j] - step_size * m[j] / (std::sqrt(v[j]) * inv_sqrt_bc2 + eps);
        }
        break;
      }
      case OptimizerKind::Sign:
        for (index_t j = 0; j < cols; ++j) {
          const T s = g[j] > T(0) ? T(1) : (g[j] < T(0) ? T(-1) : T(0));
          w[j] = decay * w[j] - lrt * s;
        }
        break;
    }
  }
}

}  // namespace fastmem
