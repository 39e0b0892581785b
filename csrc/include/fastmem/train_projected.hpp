// The projected representation: V = W U^T (d x M) trained instead of W, for updates that
// are an elementwise function of the gradient without state (Adam with betas (0, 0):
// g / (|g| + eps); sign descent) and no LayerNorm. Scores are e_x^T V, and the gradient of
// W is G = EG U with EG = E_b^T Delta (d x M, Delta the batch's residual rows; a_i its row i), so
//   V_i <- (1 - lr wd) V_i - lr sum_j s(a_i . u_j) u_j,    u_j = U[:, j] (an M-vector):
// d^2 (2 M + 1) flops per step whatever the batch, no d x d array read or kept (W itself
// is not available afterwards). The published grid's Adam runs without LayerNorm.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/normalized_rank_update.hpp"
#include "simd.hpp"
#include "static_switch.hpp"
#include "train.hpp"

namespace fastmem {

// Rows [i0, i1) of V (d x M) <- decay V - lr S U^T with S = s(EG U), S never stored, where
// EG = E_b^T Delta (d x M) is the batch's gradient in V (the W gradient is EG U). V and EG are
// held transposed (VT, EGT: M x d), the layout of the batch's dot products. One vector of
// columns j at a time, s_j = s(a_i . u_j) (a_i: row i of EG) then acc_m += s_j u_j, so that each
// entry costs 2 M multiply-adds and a reciprocal, with a_i, acc and the u_j in registers;
// two rows at a time share the loads of U. Padding columns of U are zero: s(0) = 0.
template <class T, int M, bool Sign>
void projected_rows(MatrixView<T> VT, MatrixView<const T> EGT, const simd::PaddedRows<T>& U, T lr, T eps, T decay,
                    index_t i0, index_t i1) {
  using vt = simd::vec<T>;
  constexpr int R = 2;
  for (index_t i = i0; i < i1; i += R) {
    const int rows = int(std::min<index_t>(R, i1 - i));
    vt a[R][M], acc[R][M] = {};
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) a[r][m] = simd::splat(r < rows ? EGT(m, i + r) : T(0));
    for (index_t j = 0; j < U.vecs; ++j) {
      vt u[M];
      for (int m = 0; m < M; ++m) u[m] = U.row(m)[j];
      for (int r = 0; r < R; ++r) {
        vt g = a[r][0] * u[0];
        for (int m = 1; m < M; ++m) g += a[r][m] * u[m];
        const vt s = simd::normalized<Sign>(g, eps);
        for (int m = 0; m < M; ++m) acc[r][m] += s * u[m];
      }
    }
    for (int r = 0; r < rows; ++r)
      for (int m = 0; m < M; ++m) VT(m, i + r) = decay * VT(m, i + r) - lr * simd::sum<T>(acc[r][m]);
  }
}

// Any M: column by column.
template <class T>
void projected_rows_any(MatrixView<T> VT, MatrixView<const T> EGT, MatrixView<const T> U, T lr, T eps, T decay,
                        bool sign, index_t i0, index_t i1) {
  const index_t d = U.cols, M = U.rows;
  std::vector<T> total(static_cast<std::size_t>(M));
  for (index_t i = i0; i < i1; ++i) {
    std::fill(total.begin(), total.end(), T(0));
    for (index_t j = 0; j < d; ++j) {
      T g = T(0);
      for (index_t m = 0; m < M; ++m) g += EGT(m, i) * U(m, j);
      const T s = normalized_update(g, eps, sign);
      for (index_t m = 0; m < M; ++m) total[m] += s * U(m, j);
    }
    for (index_t m = 0; m < M; ++m) VT(m, i) = decay * VT(m, i) - lr * total[m];
  }
}

// VT, EGT: M x d; U_padded: simd::PaddedRows of U, made once per run.
template <class T>
void projected_update(MatrixView<T> VT, MatrixView<const T> EGT, MatrixView<const T> U,
                      const simd::PaddedRows<T>& U_padded, T lr, T eps, T decay, bool sign) {
  const index_t M = VT.rows, d = VT.cols;
  parallel_blocks(d, threads_for(d, d * (2 * M + 1)), [&](int, index_t i0, index_t i1) {
    int_switch<2, 3, 4, 5, 6, 8>(M, [&](auto Mc) {  // the small M of real runs in registers
      constexpr int kM = decltype(Mc)::value;
      if constexpr (kM == 0) {
        projected_rows_any<T>(VT, EGT, U, lr, eps, decay, sign, i0, i1);
      } else {
        bool_switch(sign, [&](auto Sign) {
          projected_rows<T, kM, decltype(Sign)::value>(VT, EGT, U_padded, lr, eps, decay, i0, i1);
        });
      }
    });
  });
}

// The run of train() with W replaced by V = W U^T: same sampling, same records of loss,
// accuracy and margins (W and sharpness records need W: not available here).
template <class T>
TrainResult train_projected(const Problem<T>& prob, MatrixView<T> V, const double* cdf,
                            const std::int64_t* given_tokens, const OptimizerParams& opt, const TrainParams& tp,
                            const TrainRecord<T>& rec) {
  const bool normalized_adam = opt.is_normalized_adam();
  FASTMEM_CHECK_ARG(normalized_adam || opt.kind == OptimizerKind::Sign,
                    "the projected representation needs Adam with betas (0, 0) or sign descent");
  FASTMEM_CHECK_ARG(!prob.layernorm && !prob.emb.onehot(), "the projected representation needs dense E, no LayerNorm");
  FASTMEM_CHECK_ARG(!rec.W && !rec.sharpness, "the projected representation keeps no W to record");
  const index_t N = prob.N(), M = prob.M(), d = prob.d();
  FASTMEM_CHECK_ARG(V.rows == d && V.cols == M, "V must be d x M");
  const MatrixView<const T> E = prob.emb.E;
  BatchSource<T> batches(N, tp.batch_size, prob.p, cdf, given_tokens, tp.seed);
  std::vector<T> z, g, egt(std::size_t(M * d)), vt(std::size_t(M * d)), p_weights, margin_buf;
  std::vector<std::int64_t> yb;
  for (index_t x = 0; x < N; ++x) p_weights.push_back(static_cast<T>(prob.p[x]));
  const MatrixView<T> EGT(egt.data(), M, d), VT(vt.data(), M, d);  // EG and V transposed: rows of d
  for (index_t i = 0; i < d; ++i)
    for (index_t m = 0; m < M; ++m) VT(m, i) = V(i, m);
  const simd::PaddedRows<T> U_padded(prob.U);

  // Scores of the rows (null: all N) into z, then their loss, margins and residual rows.
  auto residual = [&](const std::int64_t* tokens, index_t rows, const T* w, bool grad, T* margins) {
    z.assign(std::size_t(rows * M), T(0));
    MatrixView<T> Z(z.data(), rows, M);
    if (tokens) {
      yb.resize(std::size_t(rows));
      for (index_t r = 0; r < rows; ++r) {
        for (index_t m = 0; m < M; ++m) Z(r, m) = simd::dot(E.row(tokens[r]), VT.row(m), d);
        yb[r] = prob.y[tokens[r]];
      }
    } else {
      blas::gemm<T>(false, true, T(1), E, MatrixView<const T>(VT), T(0), Z);
    }
    g.resize(std::size_t(rows * M));
    return dual_residual<T>(MatrixView<const T>(Z), tokens ? yb.data() : prob.y, nullptr, rows, w,
                            grad ? MatrixView<T>(g.data(), rows, M) : MatrixView<T>(), margins);
  };

  auto record = [&](index_t r, TrainResult& res) {
    if (!(rec.loss || rec.accuracy || rec.margins)) return;
    T* m = rec.margins ? rec.margins + r * N : (margin_buf.resize(std::size_t(N)), margin_buf.data());
    store_metrics(rec, r, scored_metrics(residual(nullptr, N, p_weights.data(), false, m), m, prob.p, N), res);
  };

  auto step = [&](Batch<T>& batch) {
    const double lr = batch.lr;
    const std::int64_t* tokens = batch.tokens;
    const index_t rows = batch.rows;
    if (!std::isfinite(residual(tokens, rows, batch.weights.data(), true, nullptr))) return false;
    std::fill(egt.begin(), egt.end(), T(0));
    for (index_t m = 0; m < M; ++m)  // EG^T = Delta^T E_b
      for (index_t r = 0; r < rows; ++r) {
        const T* e = E.row(token_at(tokens, r));
        const T c = g[r * M + m];
        T* a = EGT.row(m);
        for (index_t i = 0; i < d; ++i) a[i] += c * e[i];
      }
    projected_update(VT, MatrixView<const T>(EGT), prob.U, U_padded, static_cast<T>(lr), static_cast<T>(opt.eps),
                     static_cast<T>(1.0 - lr * opt.weight_decay), !normalized_adam);
    return true;
  };
  const TrainResult res = drive(tp.steps, rec, opt, tp.start_step, batches, record, step);
  for (index_t i = 0; i < d; ++i)
    for (index_t m = 0; m < M; ++m) V(i, m) = VT(m, i);
  return res;
}

}  // namespace fastmem
