// The scaling-law grid's models with trained embeddings (Cabannes, Dohmatob, Bietti, ICLR 2024):
//   learnable:   h = [LN](E[x] W),    E, U and W trained
//   exponential: h = [LN](relu(E[x])), E and U trained (no W)
// scores z = h U^T, softmax cross-entropy. The gradient of E is non-zero only on the
// sampled rows, which are updated in place (a sparse row update). Optimizers: SGD and
// Adam with betas = (0, 0), i.e. g / (|g| + eps), each tensor with its own learning rate.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "kernels/layernorm.hpp"
#include "kernels/softmax_xent_grad.hpp"
#include "simd.hpp"
#include "train.hpp"

namespace fastmem {

enum class ModelKind : int { Learnable = 1, Exponential = 2 };

template <class T>
struct ModelProblem {
  ModelKind kind = ModelKind::Learnable;
  MatrixView<T> E, U, W;  // N x d, M x d, d x d (W empty for exponential)
  const double* p = nullptr;
  const std::int64_t* y = nullptr;
  bool layernorm = false;
};

// The learnable model's E in its W pass: the batch's rows (tokens, distinct) take their step
// with learning rate lr, and the next batch's rows (next) are read out.
template <class T>
struct LearnableEmbeddings {
  MatrixView<T> E;
  const std::int64_t* tokens = nullptr;
  const std::int64_t* next = nullptr;
  T lr = T(0);
};

// The models' optimizer: plain SGD, or Adam with betas (0, 0) (the stateless g / (|g| + eps)),
// as the OptimizerParams every system uses (its lr the rate of W, a constant schedule), with a
// learning rate of their own for E and for U.
struct ModelOptimizer {
  OptimizerParams opt;
  double lr_E = 1.0, lr_U = 1.0;

  bool normalized() const { return opt.is_normalized_adam(); }
};

template <class T>
struct ModelWorkspace {
  std::vector<T> eb, h, r, z, g, dh, dU, dE, w;
  std::vector<std::int64_t> rows;
};

// Read-out h (rows x d) and scores z (rows x M) of the given tokens; returns the loss
// sum_i w_i l_i, writes margins (nullable) and, when `grads`, the gradient of U and dH (the
// gradient of the read-outs) into the workspace, and for the exponential model that of the
// E rows (the learnable model's W and E rows: learnable_W_pass).
// read_out: the learnable model's E[tokens] W when already taken (rows x d), else empty.
template <class T>
double model_pass(const ModelProblem<T>& pr, const std::int64_t* tokens, index_t rows, const T* w, T* margins,
                  bool grads, ModelWorkspace<T>& ws, MatrixView<const T> read_out = {}) {
  const index_t d = pr.E.cols, M = pr.U.rows;
  ws.eb.resize(std::size_t(rows * d));
  ws.h.resize(std::size_t(rows * d));
  ws.r.resize(std::size_t(rows));
  ws.z.resize(std::size_t(rows * M));
  MatrixView<T> Eb(ws.eb.data(), rows, d), H(ws.h.data(), rows, d), Z(ws.z.data(), rows, M);
  for (index_t i = 0; i < rows; ++i) std::copy(pr.E.row(token_at(tokens, i)), pr.E.row(token_at(tokens, i)) + d, Eb.row(i));
  if (pr.kind == ModelKind::Learnable && read_out.rows) {
    for (index_t i = 0; i < rows; ++i) std::copy(read_out.row(i), read_out.row(i) + d, H.row(i));
  } else if (pr.kind == ModelKind::Learnable) {
    blas::gemm<T>(false, false, T(1), MatrixView<const T>(Eb), MatrixView<const T>(pr.W), T(0), H);
  } else {
    for (index_t i = 0; i < rows * d; ++i) ws.h[i] = std::max(ws.eb[i], T(0));
  }
  if (pr.layernorm) layernorm_forward(H, ws.r.data());
  blas::gemm<T>(false, true, T(1), MatrixView<const T>(H), MatrixView<const T>(pr.U), T(0), Z);
  if (grads) ws.g.resize(std::size_t(rows * M));
  double loss = 0.0;
  for (index_t i = 0; i < rows; ++i) {
    const std::int64_t yx = pr.y[token_at(tokens, i)];
    const T* z = Z.row(i);
    T zmax = -std::numeric_limits<T>::infinity(), zother = zmax;
    for (index_t k = 0; k < M; ++k) {
      zmax = std::max(zmax, z[k]);
      if (k != yx) zother = std::max(zother, z[k]);
    }
    double sum = 0.0;
    for (index_t k = 0; k < M; ++k) sum += std::exp(double(z[k] - zmax));
    const double lse = double(zmax) + std::log(sum);
    loss += double(w[i]) * (lse - double(z[yx]));
    if (margins) margins[i] = z[yx] - zother;
    if (grads) {
      T* g = ws.g.data() + i * M;
      for (index_t k = 0; k < M; ++k) g[k] = w[i] * static_cast<T>(std::exp(double(z[k]) - lse));
      g[yx] -= w[i];
    }
  }
  if (!grads) return loss;
  MatrixView<const T> G(ws.g.data(), rows, M);
  ws.dU.resize(std::size_t(M * d));
  ws.dh.resize(std::size_t(rows * d));
  MatrixView<T> dU(ws.dU.data(), M, d), dH(ws.dh.data(), rows, d);
  blas::gemm<T>(true, false, T(1), G, MatrixView<const T>(H), T(0), dU);
  blas::gemm<T>(false, false, T(1), G, MatrixView<const T>(pr.U), T(0), dH);
  if (pr.layernorm) layernorm_backward(MatrixView<const T>(H), ws.r.data(), dH);
  if (pr.kind == ModelKind::Exponential) {
    ws.dE.resize(std::size_t(rows * d));
    for (index_t i = 0; i < rows * d; ++i) ws.dE[i] = ws.eb[i] > T(0) ? ws.dh[i] : T(0);
  }
  return loss;
}

namespace detail {

// One tile of learnable_W_pass: R rows x NV vectors of W in registers; for each batch row r,
// g += E_b(r, i) dH_r (the W gradient) and part(i, r) += dH_r . w_i (dE, from W before
// its update, as vector partial sums).
template <class T, int R, int NV, bool Adam>
FASTMEM_ALWAYS_INLINE void learnable_tile(T* w, index_t ldw, const T* ebt, index_t lde, index_t b, const T* hs,
                                          index_t ldh, simd::vec<T>* part, T lr, T eps) {
  using vt = simd::vec<T>;
  constexpr index_t L = simd::lanes<T>;
  vt wv[R][NV], g[R][NV] = {};
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) wv[i][v] = simd::load(w + i * ldw + v * L);
  for (index_t r = 0; r < b; ++r) {
    vt h[NV];
    for (int v = 0; v < NV; ++v) h[v] = simd::load(hs + r * ldh + v * L);
    for (int i = 0; i < R; ++i) {
      const vt e = simd::splat(ebt[i * lde + r]);
      vt p = part[i * b + r];
      for (int v = 0; v < NV; ++v) {
        g[i][v] += e * h[v];
        p += h[v] * wv[i][v];
      }
      part[i * b + r] = p;
    }
  }
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v)
      simd::store(w + i * ldw + v * L, wv[i][v] - lr * (Adam ? simd::normalized<false>(g[i][v], eps) : g[i][v]));
}

// One step of a trained tensor entry: SGD, or Adam with betas (0, 0).
template <class T, bool Adam>
FASTMEM_ALWAYS_INLINE T model_step(T param, T grad, T lr, T eps) {
  return Adam ? param - lr * grad / (std::fabs(grad) + eps) : param - lr * grad;
}

// Rows of W per group of learnable_W_pass: the unit of its threads and of the next read-outs'
// partial sums, fixed so that results do not depend on the thread count.
constexpr index_t kGroupRows = 64;

// Rows [i0, i1) of learnable_W_pass (whole 4-row blocks but at W's end): the tiles, dE and
// the E update of their columns, then Qp = E[next] W[i0:i1] from W as written (in cache).
template <class T, bool Adam>
void learnable_rows(MatrixView<T> W, MatrixView<const T> EbT, MatrixView<const T> dH, T lr, T eps, MatrixView<T> dE,
                    const LearnableEmbeddings<T>& emb, MatrixView<T> Qp, index_t i0, index_t i1,
                    std::vector<simd::vec<T>>& part) {
  constexpr int kRows = 4, kVecs = simd::kBytes == 64 ? 2 : 1;
  constexpr index_t L = simd::lanes<T>, S = kVecs * L;
  const index_t width = W.stride, b = dH.rows;
  part.resize(std::size_t(kRows * b));
  for (index_t i = i0; i < i1; i += kRows) {
    const index_t n = std::min<index_t>(kRows, i1 - i);
    std::fill(part.begin(), part.end(), simd::vec<T>{});
    for (index_t c = 0; c < width; c += S) {
      const bool whole = c + S <= width;
      if (n == kRows && whole)
        learnable_tile<T, kRows, kVecs, Adam>(W.row(i) + c, W.stride, EbT.row(i), EbT.stride, b, dH.ptr + c,
                                              dH.stride, part.data(), lr, eps);
      else  // the last row block, or a last single vector
        for (index_t ii = 0; ii < n; ++ii)
          for (index_t cv = c; cv < std::min(c + S, width); cv += L)
            learnable_tile<T, 1, 1, Adam>(W.row(i + ii) + cv, W.stride, EbT.row(i + ii), EbT.stride, b, dH.ptr + cv,
                                          dH.stride, part.data() + ii * b, lr, eps);
    }
    for (index_t ii = 0; ii < n; ++ii)
      for (index_t r = 0; r < b; ++r) {
        dE(r, i + ii) = simd::sum<T>(part[ii * b + r]);
        if (emb.E.ptr) {  // E's batch rows, these columns: nothing reads them until the read-out below
          T& e = emb.E(emb.tokens[r], i + ii);
          e = model_step<T, Adam>(e, dE(r, i + ii), emb.lr, eps);
        }
      }
  }
  // Qp = E[next, i0:i1] W[i0:i1]: each vector of W's rows loaded once for up to kNext rows of Qp
  constexpr int kNext = 6;
  for (index_t t0 = 0; t0 < Qp.rows; t0 += kNext) {
    const int nt = int(std::min<index_t>(kNext, Qp.rows - t0));
    const T* e[kNext];
    for (int t = 0; t < kNext; ++t) e[t] = emb.E.row(emb.next[t0 + std::min(t, nt - 1)]);
    for (index_t c = 0; c < width; c += S) {
      simd::vec<T> acc[kNext][kVecs] = {};
      for (index_t i = i0; i < i1; ++i) {
        simd::vec<T> w[kVecs];
        for (int v = 0; v < kVecs; ++v) w[v] = c + v * L < width ? simd::load(W.row(i) + c + v * L) : simd::vec<T>{};
        for (int t = 0; t < kNext; ++t) {
          const simd::vec<T> x = simd::splat(e[t][i]);
          for (int v = 0; v < kVecs; ++v) acc[t][v] += x * w[v];
        }
      }
      for (int t = 0; t < nt; ++t)
        for (int v = 0; v < kVecs && c + v * L < width; ++v) simd::store(Qp.row(t0 + t) + c + v * L, acc[t][v]);
    }
  }
}

}  // namespace detail

// The learnable model's W step in one pass over W (4-row register tiles), instead of three
// GEMMs over W, a d x d gradient and an update pass:
//   dE = dH W^T                          (b x d: the batch rows' E gradient, W before the update)
//   W <- W - lr u(E_b^T dH)              (u: identity for SGD, g / (|g| + eps) for Adam(0, 0))
// With emb.E: the batch's rows of E take their step too, and Q = E[next] W, the next batch's
// read-outs (both after this step), is summed from each 64-row group of W while in cache: W
// streams from memory once a step, where the read-out GEMM was a second stream.
// W, dH and Q are padded (simd::PaddedRows views: zero columns past d, the same stride).
template <class T>
void learnable_W_pass(MatrixView<T> W, MatrixView<const T> EbT, MatrixView<const T> dH, T lr, T eps, bool normalized,
                      MatrixView<T> dE, const LearnableEmbeddings<T>& emb = {}, MatrixView<T> Q = {}) {
  FASTMEM_CHECK_ARG(W.stride == dH.stride && W.stride % simd::lanes<T> == 0, "W and dH must be padded alike");
  FASTMEM_CHECK_ARG(Q.rows == 0 || (emb.E.ptr && Q.stride == W.stride), "Q needs E and W's padding");
  const index_t groups = (W.rows + detail::kGroupRows - 1) / detail::kGroupRows, width = W.stride;
  std::vector<T> partial(std::size_t(groups > 1 ? groups * Q.rows * width : 0));
  auto part = [&](index_t g) {  // the first group writes Q itself
    return g == 0 ? Q : MatrixView<T>(partial.data() + g * Q.rows * width, Q.rows, width, width);
  };
  parallel_blocks(groups, threads_for(groups, 8 * detail::kGroupRows * width * dH.rows),
                  [&](int, index_t g0, index_t g1) {
                    const simd::FlushDenormals<T> ftz;  // per thread: the mode is a thread's own
                    std::vector<simd::vec<T>> dE_part;
                    for (index_t g = g0; g < g1; ++g) {
                      const index_t i0 = g * detail::kGroupRows, i1 = std::min(W.rows, i0 + detail::kGroupRows);
                      if (normalized)
                        detail::learnable_rows<T, true>(W, EbT, dH, lr, eps, dE, emb, part(g), i0, i1, dE_part);
                      else
                        detail::learnable_rows<T, false>(W, EbT, dH, lr, eps, dE, emb, part(g), i0, i1, dE_part);
                    }
                  });
  for (index_t g = 1; g < groups; ++g)  // in group order, whatever the threads
    for (index_t t = 0; t < Q.rows; ++t)
      for (index_t c = 0; c < width; ++c) Q(t, c) += part(g)(t, c);
}

namespace detail {
template <class T>
void model_update(T* param, const T* grad, index_t n, double lr, const ModelOptimizer& o) {
  const T l = static_cast<T>(lr), eps = static_cast<T>(o.opt.eps);
  if (o.normalized())
    for (index_t i = 0; i < n; ++i) param[i] = model_step<T, true>(param[i], grad[i], l, eps);
  else
    for (index_t i = 0; i < n; ++i) param[i] = model_step<T, false>(param[i], grad[i], l, eps);
}
}  // namespace detail

template <class T>
TrainResult train_model(const ModelProblem<T>& pr, const ModelOptimizer& opt, const double* cdf,
                        const std::int64_t* given_tokens, const TrainParams& tp, const TrainRecord<T>& rec) {
  const index_t N = pr.E.rows, d = pr.E.cols, M = pr.U.rows;
  FASTMEM_CHECK_ARG(pr.U.cols == d, "U must have d columns");
  const simd::FlushDenormals<T> ftz;
  FASTMEM_CHECK_ARG(pr.kind == ModelKind::Exponential || (pr.W.rows == d && pr.W.cols == d), "W must be d x d");
  BatchSource<T> batches(N, tp.batch_size, pr.p, cdf, given_tokens, tp.seed);
  // The learnable model trains W in a padded copy, for learnable_W_pass.
  const bool learnable = pr.kind == ModelKind::Learnable;
  std::optional<simd::PaddedRows<T>> W_padded;
  simd::PaddedRows<T> dh_padded;
  std::vector<T> ebt;
  ModelProblem<T> prw = pr;
  if (learnable) {
    W_padded.emplace(MatrixView<const T>(pr.W));
    prw.W = W_padded->view();
  }
  ModelWorkspace<T> ws, metrics_ws;
  std::vector<T> p_weights, margin_buf(static_cast<std::size_t>(N));
  for (index_t x = 0; x < N; ++x) p_weights.push_back(static_cast<T>(pr.p[x]));

  auto record = [&](index_t r, TrainResult& res) {
    T* m = rec.margins ? rec.margins + r * N : margin_buf.data();
    store_metrics(rec, r, scored_metrics(model_pass(prw, nullptr, N, p_weights.data(), m, false, metrics_ws), m, pr.p, N),
                  res);
    if (rec.W && pr.kind == ModelKind::Learnable)
      for (index_t i = 0; i < d; ++i) std::copy(prw.W.row(i), prw.W.row(i) + d, rec.W + (r * d + i) * d);
  };
  // A learnable minibatch step with W beyond L2 (1 MiB or more) reads the next batch's rows
  // out of W in its W pass, and its batch rows of E take their step there (learnable_W_pass):
  // W streams from memory once a step, not twice (d = 1000, batch 16: 0.48 -> 0.43 ms a step).
  // Where W stays in cache, and for a full batch, the read-out is a GEMM.
  constexpr index_t kMaxReadAhead = 16;
  const bool fuse_read = learnable && tp.batch_size > 0 && d * d * index_t(sizeof(T)) >= (index_t(1) << 20);
  simd::PaddedRows<T> q_padded;
  bool read_ahead = false;
  auto step = [&](Batch<T>& batch) {
    const std::int64_t* tokens = batch.tokens;  // valid through the step (peek draws apart)
    const index_t rows = batch.rows;
    const double loss = model_pass<T>(prw, tokens, rows, batch.weights.data(), nullptr, true, ws,
                                      read_ahead ? MatrixView<const T>(q_padded.view()) : MatrixView<const T>());
    read_ahead = false;
    if (!std::isfinite(loss)) return false;
    detail::model_update(pr.U.ptr, ws.dU.data(), M * d, opt.lr_U, opt);  // U is contiguous (checked by caller)
    if (learnable) {  // dE and the W update in one pass over W; fused: E's batch rows and the next read-outs
      LearnableEmbeddings<T> emb;
      MatrixView<T> Q;
      if (fuse_read) {
        emb = {pr.E, tokens, nullptr, static_cast<T>(opt.lr_E)};
        if (batch.t + 1 < tp.steps) {
          const std::int64_t* tn;
          const index_t rn = batches.peek(batch.t + 1, batch.gt + 1, tn);
          if (rn <= kMaxReadAhead) {
            emb.next = tn;
            q_padded.reset(rn, d);
            Q = q_padded.view();
            read_ahead = true;
          }
        }
      }
      dh_padded.assign(MatrixView<const T>(ws.dh.data(), rows, d));
      ws.dE.resize(std::size_t(rows * d));
      learnable_W_pass(prw.W, gather_columns(MatrixView<const T>(pr.E), tokens, rows, ebt),
                       MatrixView<const T>(dh_padded.view()), static_cast<T>(opt.opt.lr), static_cast<T>(opt.opt.eps),
                       opt.normalized(), MatrixView<T>(ws.dE.data(), rows, d), emb, Q);
      if (fuse_read) return true;  // q_padded holds the next read-outs
    }
    for (index_t i = 0; i < rows; ++i)  // merged draws: each row of E once
      detail::model_update(pr.E.row(token_at(tokens, i)), ws.dE.data() + i * d, d, opt.lr_E, opt);
    return true;
  };
  // the rates are constant (ModelOptimizer): the step reads them, not the batch's lr
  const TrainResult res = drive(tp.steps, rec, opt.opt, tp.start_step, batches, record, step);
  if (W_padded) W_padded->copy_to(pr.W);
  return res;
}

}  // namespace fastmem
