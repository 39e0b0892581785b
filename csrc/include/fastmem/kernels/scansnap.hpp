// Scan and Snap's 1-layer transformer (Tian et al., NeurIPS 2023; docs/scansnap.md) in
// histogram form. A sequence enters the model only through its context's token counts:
// with w_l = count_l e^{Z[m, l]}, f = w / sum(w) is the attention-weighted bag of context
// tokens (the authors' X^T b), g = f / |f|, logits = Y g, cross-entropy with the next token.
// A sequence of L tokens with s distinct context tokens then costs O(L) to count and
// O(s M) for the forward pass and both gradients, where the one-hot formulation costs
// O(L M) per sequence before any product with Y or Z.
//
// Y is held transposed (Yt = Y^T, M x M): the logits are then a sum of s contiguous rows
// of Yt, and Y's gradient (nonzero only in the columns of tokens present) touches s rows.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../parallel.hpp"
#include "../params.hpp"
#include "../rng.hpp"
#include "../simd.hpp"
#include "../views.hpp"
#include "softmax_xent_grad.hpp"

namespace fastmem::scansnap {

// Facts of the synthetic task: fact f has query token q[f], next token n[f] and a context
// distribution over the support tok[ptr[f] .. ptr[f+1]) with probabilities prob (summing to
// 1), drawn with Walker's alias tables (thresh, alias: slot-local indices).
struct Facts {
  const std::int64_t* q = nullptr;
  const std::int64_t* n = nullptr;
  const std::int64_t* ptr = nullptr;
  const std::int64_t* tok = nullptr;
  const double* prob = nullptr;
  const std::uint64_t* thresh = nullptr;  // keep the slot when the low 32 bits are below it (<= 2^32)
  const std::int64_t* alias = nullptr;
  index_t F = 0;
};

// User-given sequences: tokens (S x L), the last column the query; target (S).
struct Sequences {
  const std::int64_t* tokens = nullptr;
  const std::int64_t* target = nullptr;
  index_t S = 0, L = 0;
};

// An index in [0, n) from the high 32 bits (Lemire's multiply-shift; n < 2^32).
FASTMEM_HD inline index_t bounded_index(std::uint64_t bits, index_t n) {
  return static_cast<index_t>(((bits >> 32) * static_cast<std::uint64_t>(n)) >> 32);
}

// One alias draw among s slots: the slot from the high bits, slot or alias by the low bits.
// Integer arithmetic only, so the numba and numpy backends draw the same tokens.
FASTMEM_HD inline index_t alias_draw(std::uint64_t bits, const std::uint64_t* thresh, const std::int64_t* alias,
                                     index_t s) {
  const index_t k = bounded_index(bits, s);
  const index_t a = alias[k];
  // an arithmetic select: the branch would be mispredicted about half the time
  const index_t keep = static_cast<index_t>((bits & 0xFFFFFFFFull) < thresh[k]);
  return a + (k - a) * keep;
}

// The 64 random bits of draw `counter`: SplitMix64's output number counter + 1 from the state
// `key` (one mix per draw; the core's CounterRng mixes twice).
inline std::uint64_t draw_bits(std::uint64_t key, std::uint64_t counter) {
  return splitmix64(key + counter * 0x9E3779B97F4A7C15ULL);
}

// The counter of draw j of sequence b at global step t: j = 0 picks the fact (or the
// sequence), j = 1 .. L-1 the context tokens. Any step can be drawn alone (resuming).
inline std::uint64_t draw_counter(index_t step, index_t b, index_t B, index_t L, index_t j) {
  return (static_cast<std::uint64_t>(step) * std::uint64_t(B) + std::uint64_t(b)) * std::uint64_t(L) + std::uint64_t(j);
}

// A batch in histogram form: row b has query q[b], target n[b] and len[b] distinct context
// tokens tok[start[b] ..] (ascending) with weights cnt (counts; P(l | n) for the population).
template <class T>
struct Histograms {
  std::vector<std::int64_t> q, n, start, len, tok;
  std::vector<T> cnt;
  index_t rows() const { return static_cast<index_t>(q.size()); }
};

// Sorts the distinct tokens of one context (counts in `count`, an M-array of zeros that
// is left zero again) into tok/cnt; returns how many.
template <class T>
index_t count_tokens(const std::int64_t* ctx, index_t n_ctx, std::vector<std::int32_t>& count, std::int64_t* tok,
                     T* cnt) {
  index_t s = 0;
  for (index_t j = 0; j < n_ctx; ++j)
    if (count[ctx[j]]++ == 0) tok[s++] = ctx[j];
  std::sort(tok, tok + s);
  for (index_t j = 0; j < s; ++j) {
    cnt[j] = static_cast<T>(count[tok[j]]);
    count[tok[j]] = 0;
  }
  return s;
}

// The histograms of global step `step`'s batch of B sequences of L tokens, drawn from the
// facts (or from the user's sequences when seq.tokens is set). Workspace O(B L + M).
template <class T>
void sample_batch(const Facts& facts, const Sequences& seq, std::uint64_t seed, index_t step, index_t B, index_t L,
                  index_t M, Histograms<T>& h) {
  const std::uint64_t key = splitmix64(seed);
  const index_t cap = L - 1;
  h.q.resize(B), h.n.resize(B), h.start.resize(B), h.len.resize(B);
  h.tok.resize(B * cap), h.cnt.resize(B * cap);
  const bool parallel = B * L > (index_t(1) << 16);
#pragma omp parallel if (parallel) num_threads(max_threads())
  {
    std::vector<std::int32_t> count(M, 0);
    std::vector<std::int64_t> slot(cap);
#pragma omp for schedule(static)
    for (index_t b = 0; b < B; ++b) {
      const std::uint64_t base = draw_counter(step, b, B, L, 0);
      const std::uint64_t pick = draw_bits(key, base);
      std::int64_t* tok = h.tok.data() + b * cap;
      T* cnt = h.cnt.data() + b * cap;
      h.start[b] = b * cap;
      if (seq.tokens) {
        const index_t i = bounded_index(pick, seq.S);
        const std::int64_t* c = seq.tokens + i * L;
        h.q[b] = c[L - 1], h.n[b] = seq.target[i];
        h.len[b] = count_tokens(c, cap, count, tok, cnt);
        continue;
      }
      // Facts: draw slots of the fact's support (tokens ascending), count by slot: no
      // sort, no test for a token seen before.
      const index_t f = bounded_index(pick, facts.F);
      const index_t p0 = facts.ptr[f], s = facts.ptr[f + 1] - p0;
      const std::uint64_t* thresh = facts.thresh + p0;
      const std::int64_t* alias = facts.alias + p0;
      for (index_t j = 0; j < cap; ++j) slot[j] = alias_draw(draw_bits(key, base + 1 + j), thresh, alias, s);
      for (index_t j = 0; j < cap; ++j) ++count[slot[j]];
      index_t len = 0;
      for (index_t k = 0; k < s; ++k) {
        if (count[k] == 0) continue;
        tok[len] = facts.tok[p0 + k], cnt[len++] = static_cast<T>(count[k]);
        count[k] = 0;
      }
      h.q[b] = facts.q[f], h.n[b] = facts.n[f], h.len[b] = len;
    }
  }
}

// The population "batch": one row per fact, weighted by P(l | n) (the long-sequence limit).
template <class T>
void population_batch(const Facts& facts, Histograms<T>& h) {
  const index_t F = facts.F, nnz = facts.ptr[F];
  h.q.assign(facts.q, facts.q + F), h.n.assign(facts.n, facts.n + F);
  h.start.resize(F), h.len.resize(F);
  for (index_t f = 0; f < F; ++f) h.start[f] = facts.ptr[f], h.len[f] = facts.ptr[f + 1] - facts.ptr[f];
  h.tok.assign(facts.tok, facts.tok + nnz);
  h.cnt.resize(nnz);
  for (index_t k = 0; k < nnz; ++k) h.cnt[k] = static_cast<T>(facts.prob[k]);
}

// Per-row results of the forward/backward pass: r (rows x M) = (softmax - e_n) * weight,
// and per histogram entry g (the normalised attention bag), dz (dloss/dZ[q, tok]) and u
// (dloss/df, scratch).
template <class T>
struct Gradients {
  std::vector<T> r, g, dz, u;
  double loss = 0.0;
};

// v[j] = Yt[tok[j]] . r for j < s: four rows at a time, so that four independent chains of
// multiply-adds share each load of r (one chain waits on each addition's latency).
template <class T>
void dots(MatrixView<const T> Yt, const std::int64_t* tok, index_t s, const T* r, T* v) {
  constexpr index_t W = simd::lanes<T>;
  const index_t M = Yt.cols, full = M / W * W;
  index_t j = 0;
  for (; j + 4 <= s; j += 4) {
    const T *y0 = Yt.row(tok[j]), *y1 = Yt.row(tok[j + 1]), *y2 = Yt.row(tok[j + 2]), *y3 = Yt.row(tok[j + 3]);
    simd::vec<T> a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (index_t i = 0; i < full; i += W) {
      const simd::vec<T> ri = simd::load(r + i);
      a0 += simd::load(y0 + i) * ri, a1 += simd::load(y1 + i) * ri;
      a2 += simd::load(y2 + i) * ri, a3 += simd::load(y3 + i) * ri;
    }
    T s0 = simd::sum<T>(a0), s1 = simd::sum<T>(a1), s2 = simd::sum<T>(a2), s3 = simd::sum<T>(a3);
    for (index_t i = full; i < M; ++i) s0 += y0[i] * r[i], s1 += y1[i] * r[i], s2 += y2[i] * r[i], s3 += y3[i] * r[i];
    v[j] = s0, v[j + 1] = s1, v[j + 2] = s2, v[j + 3] = s3;
  }
  for (; j < s; ++j) {
    const T* y = Yt.row(tok[j]);
    simd::vec<T> a = {};
    for (index_t i = 0; i < full; i += W) a += simd::load(y + i) * simd::load(r + i);
    T acc = simd::sum<T>(a);
    for (index_t i = full; i < M; ++i) acc += y[i] * r[i];
    v[j] = acc;
  }
}

// r (M) = sum_j g[j] Yt[tok[j]], summed over j in registers, block by block (summed in
// memory, r would be stored and loaded again for every j).
template <class T>
void logits(MatrixView<const T> Yt, const std::int64_t* tok, const T* g, index_t s, T* r) {
  constexpr index_t W = simd::lanes<T>, B4 = 4 * W;
  const index_t M = Yt.cols;
  index_t i0 = 0;
  for (; i0 + B4 <= M; i0 += B4) {
    simd::vec<T> a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (index_t j = 0; j < s; ++j) {
      const T* y = Yt.row(tok[j]) + i0;
      const simd::vec<T> gj = simd::splat(g[j]);
      a0 += gj * simd::load(y), a1 += gj * simd::load(y + W);
      a2 += gj * simd::load(y + 2 * W), a3 += gj * simd::load(y + 3 * W);
    }
    simd::store(r + i0, a0), simd::store(r + i0 + W, a1);
    simd::store(r + i0 + 2 * W, a2), simd::store(r + i0 + 3 * W, a3);
  }
  for (; i0 + W <= M; i0 += W) {
    simd::vec<T> a = {};
    for (index_t j = 0; j < s; ++j) a += simd::splat(g[j]) * simd::load(Yt.row(tok[j]) + i0);
    simd::store(r + i0, a);
  }
  for (; i0 < M; ++i0) {
    T a = T(0);
    for (index_t j = 0; j < s; ++j) a += g[j] * Yt(tok[j], i0);
    r[i0] = a;
  }
}

// Forward and backward for every row of h, each row weighted by `weight` (1 / batch):
// the weighted loss and the pieces of both gradients. Yt and Z are read only.
template <class T>
void forward_backward(MatrixView<const T> Yt, MatrixView<const T> Z, const Histograms<T>& h, double weight,
                      Gradients<T>& out) {
  const index_t R = h.rows(), M = Yt.cols;
  out.r.resize(R * M), out.g.resize(h.cnt.size()), out.dz.resize(h.cnt.size()), out.u.resize(h.cnt.size());
  double loss = 0.0;
  index_t work = 0;
  for (index_t b = 0; b < R; ++b) work += h.len[b] * M;
  const T wt = static_cast<T>(weight);
#pragma omp parallel for schedule(static) reduction(+ : loss) if (work > kParallelWork) num_threads(max_threads())
  for (index_t b = 0; b < R; ++b) {
    const index_t s = h.len[b], p0 = h.start[b];
    const std::int64_t* tok = h.tok.data() + p0;
    const T* cnt = h.cnt.data() + p0;
    T* g = out.g.data() + p0;
    T* dz = out.dz.data() + p0;  // holds f until the end
    const T* zrow = Z.row(h.q[b]);
    T zmax = -std::numeric_limits<T>::infinity();
    for (index_t j = 0; j < s; ++j) zmax = std::max(zmax, zrow[tok[j]]);
    T S = T(0);
    for (index_t j = 0; j < s; ++j) S += dz[j] = cnt[j] * std::exp(zrow[tok[j]] - zmax);
    T nf2 = T(0);
    for (index_t j = 0; j < s; ++j) {
      dz[j] /= S;
      nf2 += dz[j] * dz[j];
    }
    const T nf = std::sqrt(nf2);
    for (index_t j = 0; j < s; ++j) g[j] = dz[j] / nf;
    // logits = sum_j g_j Yt[tok_j], softmax, residual
    T* r = out.r.data() + b * M;
    logits(Yt, tok, g, s, r);
    const index_t n = h.n[b];
    const T zn = r[n];
    T lmax = r[0];
#pragma omp simd reduction(max : lmax)
    for (index_t i = 1; i < M; ++i) lmax = std::max(lmax, r[i]);
    T sum = T(0);
#pragma omp simd reduction(+ : sum)
    for (index_t i = 0; i < M; ++i) {
      const T e = exp_nonpositive(r[i] - lmax);
      r[i] = e;
      sum += e;
    }
    // loss_b = lse - logit_n (not -log softmax_n, which underflows to -log 0 far from the optimum)
    loss += weight * (static_cast<double>(lmax) + std::log(static_cast<double>(sum)) - static_cast<double>(zn));
    const T scale = wt / sum;
#pragma omp simd
    for (index_t i = 0; i < M; ++i) r[i] *= scale;
    r[n] -= wt;
    // v_j = Yt[tok_j] . r, then back through the normalisation and the attention softmax
    T gv = T(0);
    T* v = out.u.data() + p0;
    dots(Yt, tok, s, r, v);
    for (index_t j = 0; j < s; ++j) gv += g[j] * v[j];
    T fu = T(0);
    for (index_t j = 0; j < s; ++j) {
      v[j] = (v[j] - gv * g[j]) / nf;  // u = dloss/df
      fu += dz[j] * v[j];
    }
    for (index_t j = 0; j < s; ++j) dz[j] = dz[j] * (v[j] - fu);
  }
  out.loss = loss;
}

// Rows of a parameter matrix that have a gradient this step: row[k] (ascending) and the
// entries contributing to it, entry[first[k] .. first[k+1]) (indices into the grouped keys).
struct TouchedRows {
  std::vector<std::int64_t> row, first, entry;
};

// Groups `keys` (one per entry) by value: touched rows in ascending order. `mark` is an
// M-array of -1 left as it was found.
inline void group_by(const std::vector<std::int64_t>& keys, std::vector<std::int64_t>& mark, TouchedRows& t) {
  t.row.clear();
  for (std::int64_t k : keys)
    if (mark[k] < 0) mark[k] = 0, t.row.push_back(k);
  std::sort(t.row.begin(), t.row.end());
  const index_t R = static_cast<index_t>(t.row.size());
  t.first.assign(R + 1, 0);
  for (index_t i = 0; i < R; ++i) mark[t.row[i]] = i;
  for (std::int64_t k : keys) ++t.first[mark[k] + 1];
  for (index_t i = 0; i < R; ++i) t.first[i + 1] += t.first[i];
  t.entry.resize(keys.size());
  std::vector<std::int64_t> fill(t.first.begin(), t.first.end() - 1);
  for (index_t e = 0; e < static_cast<index_t>(keys.size()); ++e) t.entry[fill[mark[keys[e]]]++] = e;
  for (std::int64_t r : t.row) mark[r] = -1;
}

// One optimizer step of W (torch.optim.SGD / Adam semantics, no weight decay) whose gradient
// is zero outside the touched rows; row_grad(k, G) writes touched row k's gradient into G
// (M entries, zeroed). adam_t: the step count after this step (bias correction).
template <class T, class RowGrad>
void update_rows(MatrixView<T> W, MatrixView<T> m, MatrixView<T> v, const OptimizerParams& o, double lr, index_t adam_t,
                 const TouchedRows& t, std::vector<std::int64_t>& slot, RowGrad&& row_grad) {
  const index_t cols = W.cols, K = static_cast<index_t>(t.row.size());
  const bool stateless = o.is_plain_sgd();  // touches only the rows with a gradient
  const index_t rows = stateless ? K : W.rows;
  for (index_t k = 0; k < K; ++k) slot[t.row[k]] = k;
  const T lrt = static_cast<T>(lr), mu = static_cast<T>(o.momentum);
  const T b1 = static_cast<T>(o.beta1), b2 = static_cast<T>(o.beta2), eps = static_cast<T>(o.eps);
  const double bc1 = 1.0 - std::pow(o.beta1, double(adam_t)), bc2 = 1.0 - std::pow(o.beta2, double(adam_t));
  const T step_size = static_cast<T>(lr / bc1), inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(bc2));
#pragma omp parallel if (rows * cols > kParallelWork) num_threads(max_threads())
  {
    std::vector<T> G(cols);
#pragma omp for schedule(static)
    for (index_t i = 0; i < rows; ++i) {
      const index_t row = stateless ? t.row[i] : i;
      const index_t k = stateless ? i : slot[row];
      const bool has = k >= 0;
      if (has) {
        std::fill(G.begin(), G.end(), T(0));
        row_grad(k, G.data());
      }
      T* w = W.row(row);
      if (stateless) {
#pragma omp simd
        for (index_t j = 0; j < cols; ++j) w[j] -= lrt * G[j];
      } else if (o.kind == OptimizerKind::SGD) {
        T* mr = m.row(row);
        if (has) {
#pragma omp simd
          for (index_t j = 0; j < cols; ++j) {
            mr[j] = mu * mr[j] + G[j];
            w[j] -= lrt * mr[j];
          }
        } else {
#pragma omp simd
          for (index_t j = 0; j < cols; ++j) {
            mr[j] = mu * mr[j];
            w[j] -= lrt * mr[j];
          }
        }
      } else {
        T* mr = m.row(row);
        T* vr = v.row(row);
        const T* g = has ? G.data() : nullptr;
        for (index_t j = 0; j < cols; ++j) {
          const T gj = g ? g[j] : T(0);
          mr[j] = b1 * mr[j] + (T(1) - b1) * gj;
          vr[j] = b2 * vr[j] + (T(1) - b2) * gj * gj;
          w[j] -= step_size * mr[j] / (std::sqrt(vr[j]) * inv_sqrt_bc2 + eps);
        }
      }
    }
  }
  for (index_t k = 0; k < K; ++k) slot[t.row[k]] = -1;
}

}  // namespace fastmem::scansnap
