// One pass over a set of tokens: read the memory, (LayerNorm,) fused softmax
// cross-entropy, (LayerNorm backward). Leaves dL/dQ in H so that the caller
// writes the gradient E[tokens]^T H into W or into a gradient buffer.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "../problem.hpp"
#include "layernorm.hpp"
#include "embedding.hpp"
#include "softmax_xent_grad.hpp"

namespace fastmem {

template <class T>
struct PassWorkspace {
  std::vector<T> eb, q, h, r, w, lse, zy, zother;
  std::vector<std::int64_t> yb;
  SoftmaxXentWorkspace<T> sx;
  MatrixView<const T> Eb;  // the gathered rows of the last pass

  void resize(index_t b, index_t d) {
    q.resize(std::size_t(b * d));
    h.resize(std::size_t(b * d));
    for (auto* v : {&r, &w, &lse, &zy, &zother}) v->resize(std::size_t(b));
    yb.resize(std::size_t(b));
  }
  MatrixView<T> Q(index_t b, index_t d) { return {q.data(), b, d}; }
  MatrixView<T> H(index_t b, index_t d) { return {h.data(), b, d}; }
};

// tokens: b token ids, or null for all N tokens in order; ws.w must hold the b
// row weights; targets: b per-row targets, or null for the task's y(x).
// Returns sum_i w_i l_i; ws.lse/zy/zother/H hold the per-row results. read_done: ws.q
// already holds the read-outs E[tokens] W (normalized_rank_update took them), ws.Eb is not set.
template <class T>
double forward_backward(const Problem<T>& prob, MatrixView<const T> W, const std::int64_t* tokens, index_t b,
                        PassWorkspace<T>& ws, const std::int64_t* targets = nullptr, bool read_done = false) {
  const index_t d = prob.d();
  ws.resize(b, d);
  MatrixView<T> Q = ws.Q(b, d), H = ws.H(b, d);
  if (!read_done) {
    ws.Eb = prob.emb.onehot() ? MatrixView<const T>() : gather_rows(prob.emb, tokens, b, ws.eb);
    embed_read(prob.emb, tokens, ws.Eb, W, Q);
  }
  if (prob.layernorm) layernorm_forward(Q, ws.r.data());
  for (index_t i = 0; i < b; ++i) ws.yb[i] = targets ? targets[i] : prob.y[token_at(tokens, i)];
  SoftmaxXentGradParams<T> sp{Q, prob.U, ws.yb.data(), ws.w.data(), H,
                              ws.lse.data(), ws.zy.data(), ws.zother.data(), prob.chunk};
  softmax_xent_grad(sp, ws.sx);
  if (prob.layernorm) layernorm_backward(MatrixView<const T>(Q), ws.r.data(), H);
  double loss = 0.0;
  for (index_t i = 0; i < b; ++i) loss += double(ws.w[i]) * (double(ws.lse[i]) - double(ws.zy[i]));
  return loss;
}

}  // namespace fastmem
