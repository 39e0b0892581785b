// The induction-head study of the associative-memory paper (Cabannes, Simsek, Bietti, ICML 2024,
// section 6; the model of Bietti et al., "Birth of a Transformer"; docs/transformer.md): the
// data generator and the two-layer attention-only transformer's forward and backward passes.
//
// Model (rows are positions; torch's weight convention, k_s = W_K h_s):
//   x_t = wE[z_t] + P[t];  h1_t = x_t + W_O1 W_V1 sum_{s<=t} b1_ts x_s,
//   b1_t. = softmax_{s<=t}(x_t^T W_K1 x_s / sqrt d);   the same again with h1 for layer 2;
//   xi_t = W_U h2_t,  h2_t = h1_t + W_O2 W_V2 sum_{s<=t} b2_ts h1_s.
//
// Layer 1 sees only token + position embeddings, so its scores and values are table look-ups:
// with XX = [wE; P] ((V + n) x d), s_ts = G1[z_t, z_s] + G1[z_t, V+s] + G1[V+t, z_s] + G1[V+t, V+s]
// for the one table G1 = XX W_K1 XX^T / sqrt d, and its values W_O1 W_V1 x_s are rows of
// CT = XX (W_O1 W_V1)^T. W_K1's gradient is likewise XX^T D XX / sqrt d for D the scores'
// gradient scattered onto G1's entries: no d-sized work per score in either direction.
// Layer 2 is evaluated only at the rows a loss reads (the in-context targets, ~30% of them),
// its query side as q'_t = W_K2^T h1_t and its values as W_V2 (sum_s b2_ts h1_s), so that no
// product is taken at a row nothing reads. Sequences run in parallel, each in a thread's own
// workspace (T x T, never the batch's B x T x T).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../blas.hpp"
#include "../parallel.hpp"
#include "../rng.hpp"
#include "../views.hpp"
#include "scansnap.hpp"
#include "softmax_xent_grad.hpp"

namespace fastmem::transformer {

// ---------------------------------------------------------------------------------------------
// The data: sequences of character bigrams with k trigger tokens whose next token is fixed per
// sequence (birth's ihead_data.py, gen_seq).

// The bigram tables: the marginal pi (V) and the conditional rows C (V x V, each summing to 1),
// with Walker alias tables for both (scansnap.hpp's alias_draw; slot k of row r is token k).
struct BigramTables {
  const double* pi = nullptr;
  const std::uint64_t* pi_thresh = nullptr;
  const std::int64_t* pi_alias = nullptr;
  const std::uint64_t* cond_thresh = nullptr;  // V x V
  const std::int64_t* cond_alias = nullptr;    // V x V
  index_t V = 0;
};

struct SampleSpec {
  std::uint64_t seed = 0;
  index_t step = 0;      // the global step: its batch depends on (seed, step) alone
  index_t k = 0;         // triggers per sequence
  bool random_triggers = false;
  bool bigram_outputs = false;           // outputs from the trigger's bigram row, else uniform
  const std::int64_t* triggers = nullptr;  // k fixed triggers (unless random)
};

// Draw j of sequence b at `step`: j < k the triggers, k <= j < 2k the outputs, 2k + t the token
// z_t (t = 0 .. T). The same counters on every backend (fastmem/transformer/data.py).
inline std::uint64_t sample_counter(index_t step, index_t b, index_t B, index_t T, index_t k, index_t j) {
  return (std::uint64_t(step) * std::uint64_t(B) + std::uint64_t(b)) * std::uint64_t(2 * k + T + 1) + std::uint64_t(j);
}

// A draw from pi without the tokens already chosen (numpy's choice(replace=False, p=pi), one
// draw at a time): a linear scan, the same float64 sums in the same order on every backend.
inline index_t draw_excluding(const double* pi, const unsigned char* chosen, index_t V, double u) {
  double mass = 0.0;
  for (index_t v = 0; v < V; ++v)
    if (!chosen[v]) mass += pi[v];
  const double target = u * mass;
  double acc = 0.0;
  index_t last = -1;
  for (index_t v = 0; v < V; ++v) {
    if (chosen[v] || pi[v] <= 0.0) continue;
    acc += pi[v];
    last = v;
    if (target < acc) return v;
  }
  return last;  // u * mass rounded up to mass
}

// z (B x (T+1)) tokens, outs (B x T): outs[b, t] > 0 where z[b, t] is a trigger, counting its
// occurrences so far (the target z[b, t+1] is then its output); 0 elsewhere.
inline void sample_batch(const BigramTables& tb, const SampleSpec& sp, MatrixView<std::int64_t> z,
                         MatrixView<std::int64_t> outs) {
  const index_t B = z.rows, T = outs.cols, V = tb.V, k = sp.k;
  const std::uint64_t key = splitmix64(sp.seed);
  auto uniform = [&](std::uint64_t c) { return double(scansnap::draw_bits(key, c) >> 11) * 0x1.0p-53; };
#pragma omp parallel num_threads(threads_for(B, T * 8))
  {
    std::vector<std::int64_t> trig(k), out(k), count(k), which(V);
    std::vector<unsigned char> chosen(V);
#pragma omp for schedule(static)
    for (index_t b = 0; b < B; ++b) {
      auto ctr = [&](index_t j) { return sample_counter(sp.step, b, B, T, k, j); };
      std::fill(chosen.begin(), chosen.end(), 0);
      for (index_t i = 0; i < k; ++i) {
        trig[i] = sp.random_triggers ? draw_excluding(tb.pi, chosen.data(), V, uniform(ctr(i))) : sp.triggers[i];
        chosen[trig[i]] = 1;
      }
      for (index_t i = 0; i < k; ++i) {
        const std::uint64_t bits = scansnap::draw_bits(key, ctr(k + i));
        out[i] = sp.bigram_outputs
                     ? scansnap::alias_draw(bits, tb.cond_thresh + trig[i] * V, tb.cond_alias + trig[i] * V, V)
                     : scansnap::bounded_index(bits, V);
      }
      std::fill(which.begin(), which.end(), -1);
      for (index_t i = 0; i < k; ++i) which[trig[i]] = i, count[i] = 0;
      std::int64_t* zb = z.row(b);
      std::int64_t* ob = outs.row(b);
      zb[0] = scansnap::alias_draw(scansnap::draw_bits(key, ctr(2 * k)), tb.pi_thresh, tb.pi_alias, V);
      for (index_t t = 0; t < T; ++t) {
        const index_t j = which[zb[t]];
        if (j >= 0) {
          zb[t + 1] = out[j];
          ob[t] = ++count[j];
        } else {
          const std::uint64_t bits = scansnap::draw_bits(key, ctr(2 * k + 1 + t));
          zb[t + 1] = scansnap::alias_draw(bits, tb.cond_thresh + zb[t] * V, tb.cond_alias + zb[t] * V, V);
          ob[t] = 0;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The model.

template <class T>
struct Weights {
  MatrixView<const T> wE, P;               // V x d token embeddings, n x d positions
  MatrixView<const T> WK1, WV1, WO1;       // d x d (torch's weight layout)
  MatrixView<const T> WK2, WV2, WO2;       // d x d
  MatrixView<const T> WU;                  // V x d
  index_t V() const { return wE.rows; }
  index_t n() const { return P.rows; }
  index_t d() const { return wE.cols; }
};

// Gradients to accumulate (an empty view: that matrix is not trained), same layouts as Weights.
template <class T>
struct Grads {
  MatrixView<T> wE, WK1, WK2, WO2, WU;
  bool any() const { return !(wE.empty() && WK1.empty() && WK2.empty() && WO2.empty() && WU.empty()); }
  bool through_layer2() const { return !(wE.empty() && WK1.empty() && WK2.empty()); }
  bool through_layer1() const { return !(wE.empty() && WK1.empty()); }
};

// The rows of each sequence that a loss reads: sequence b's are positions idx[ptr[b] .. ptr[b+1])
// (ascending); the targets are z[b, t + 1].
struct Rows {
  const std::int64_t* ptr = nullptr;  // B + 1
  const std::int64_t* idx = nullptr;
};

// exp(s - max) in T, with what falls below 1e-30 set to 0: float32 softmax tails that reach the
// subnormals slow every later product with them ~4x on x86 (docs/transformer.md), and a weight
// under 1e-30 cannot move a float32 result.
template <class T>
inline T softmax_weight(T x) {
  const T e = exp_nonpositive(x);
  return e < T(1e-30) ? T(0) : e;
}

// b[0 .. len) = softmax(b + add) in place (add may be null). The reductions are declared to the
// compiler (omp simd), which may not reorder a float sum by itself and would leave the row's
// exps scalar.
template <class T>
void normalize_causal_row(T* b, const T* add, index_t len) {
  T mx = -std::numeric_limits<T>::infinity();
  if (add) {
#pragma omp simd reduction(max : mx)
    for (index_t s = 0; s < len; ++s) b[s] += add[s], mx = std::max(mx, b[s]);
  } else {
#pragma omp simd reduction(max : mx)
    for (index_t s = 0; s < len; ++s) mx = std::max(mx, b[s]);
  }
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (index_t s = 0; s < len; ++s) b[s] = softmax_weight<T>(b[s] - mx), sum += b[s];
  const T inv = T(1) / sum;
#pragma omp simd
  for (index_t s = 0; s < len; ++s) b[s] *= inv;
}

// sum_s b[s] * db[s] over s < len
template <class T>
T row_dot(const T* b, const T* db, index_t len) {
  T dot = 0;
#pragma omp simd reduction(+ : dot)
  for (index_t s = 0; s < len; ++s) dot += b[s] * db[s];
  return dot;
}

template <class T>
MatrixView<T> block(MatrixView<T> A, index_t r0, index_t nr, index_t nc) {
  return {A.ptr + r0 * A.stride, nr, nc, A.stride};
}

constexpr index_t kCausalBlock = 64;  // row blocks of the causal products: ~1/(2 n / 64) waste

// C (n x c) = beta C + L B for L (n x n) lower triangular (zeros above the diagonal stored).
template <class T>
void lower_times(MatrixView<const T> L, MatrixView<const T> B, MatrixView<T> C, T beta) {
  for (index_t r0 = 0; r0 < C.rows; r0 += kCausalBlock) {
    const index_t r1 = std::min(C.rows, r0 + kCausalBlock);
    blas::gemm_serial<T>(false, false, T(1), block(L, r0, r1 - r0, r1), B.row_block(0, r1), beta,
                         C.row_block(r0, r1 - r0));
  }
}

// C (n x c) += L^T B, L (n x n) lower triangular.
template <class T>
void lower_transposed_times(MatrixView<const T> L, MatrixView<const T> B, MatrixView<T> C) {
  for (index_t r0 = 0; r0 < C.rows; r0 += kCausalBlock) {
    const index_t r1 = std::min(C.rows, r0 + kCausalBlock);
    blas::gemm_serial<T>(true, false, T(1), block(L, r0, r1 - r0, r1), B.row_block(r0, r1 - r0), T(1),
                         C.row_block(0, r1));
  }
}

// The lower triangle (and a few entries above it, never read) of D (n x n) = A B^T.
template <class T>
void lower_of_product(MatrixView<const T> A, MatrixView<const T> B, MatrixView<T> D) {
  for (index_t r0 = 0; r0 < D.rows; r0 += kCausalBlock) {
    const index_t r1 = std::min(D.rows, r0 + kCausalBlock);
    blas::gemm_serial<T>(false, true, T(1), A.row_block(r0, r1 - r0), B.row_block(0, r1), T(0),
                         block(D, r0, r1 - r0, r1));
  }
}

// What every call computes once from the weights: the layer-1 tables.
template <class T>
struct Layer1Tables {
  index_t V, n, d;
  std::vector<T> XX, G1, CT, VO;  // (V+n) x d, (V+n) x (V+n), (V+n) x d, d x d

  explicit Layer1Tables(const Weights<T>& w) : V(w.V()), n(w.n()), d(w.d()) {
    const index_t m = V + n;
    XX.resize(m * d), G1.resize(m * m), CT.resize(m * d), VO.resize(d * d);
    for (index_t r = 0; r < V; ++r) std::copy(w.wE.row(r), w.wE.row(r) + d, XX.data() + r * d);
    for (index_t r = 0; r < n; ++r) std::copy(w.P.row(r), w.P.row(r) + d, XX.data() + (V + r) * d);
    MatrixView<const T> xx(XX.data(), m, d);
    std::vector<T> XK(m * d);
    blas::gemm<T>(false, false, T(1), xx, w.WK1, T(0), MatrixView<T>(XK.data(), m, d));
    blas::gemm<T>(false, true, T(1.0 / std::sqrt(double(d))), MatrixView<const T>(XK.data(), m, d), xx, T(0),
                  MatrixView<T>(G1.data(), m, m));
    blas::gemm<T>(false, false, T(1), w.WO1, w.WV1, T(0), MatrixView<T>(VO.data(), d, d));
    blas::gemm<T>(false, true, T(1), xx, MatrixView<const T>(VO.data(), d, d), T(0), MatrixView<T>(CT.data(), m, d));
  }
  MatrixView<const T> xx() const { return {XX.data(), V + n, d}; }
};

// One thread's workspace and one sequence's forward (and backward) pass.
template <class T>
struct SequencePass {
  const Weights<T>& w;
  const Layer1Tables<T>& tab;
  index_t V, n, d;
  T inv_sqrt_d;
  // forward
  std::vector<T> C, H1, B1, g, Hr, Qk, B2, Mx, A2;
  // backward
  std::vector<T> H2, Gs, dH2, dA2, dMx, dB2, dQk, dH1, dB1, dC, drow;
  // the thread's accumulated gradients: D of G1, dCT and dXX (wE's rows), dWK2, dWO2, dWU
  std::vector<T> D, dCT, dXX, gWK2, gWO2, gWU;
  index_t nr = 0, span = 0;  // rows read in this sequence; positions 0 .. span-1 that layer 2 sees
  const std::int64_t* z = nullptr;
  const std::int64_t* rows = nullptr;

  SequencePass(const Weights<T>& w_, const Layer1Tables<T>& t_)
      : w(w_), tab(t_), V(w_.V()), n(w_.n()), d(w_.d()), inv_sqrt_d(T(1.0 / std::sqrt(double(w_.d())))) {
    C.resize(n * d), H1.resize(n * d), B1.resize(n * n), g.resize(V);
    Hr.resize(n * d), Qk.resize(n * d), B2.resize(n * n), Mx.resize(n * d), A2.resize(n * d);
  }

  MatrixView<T> m(std::vector<T>& v, index_t r, index_t c) { return {v.data(), r, c}; }

  // Forward of sequence z (n + 1 tokens) at the rows rows[0 .. nr): Hr (nr x d) the rows' h1,
  // A2 (nr x d) their layer-2 attention outputs W_V2 sum_s b2_ts h1_s.
  void forward(const std::int64_t* z_, const std::int64_t* rows_, index_t nr_) {
    z = z_, rows = rows_, nr = nr_;
    if (nr == 0) return;
    span = rows[nr - 1] + 1;
    const index_t m1 = V + n, s1 = span;
    const T* G1 = tab.G1.data();
    const T* CT = tab.CT.data();
    const T* XX = tab.XX.data();
    for (index_t t = 0; t < s1; ++t) {  // values and residual stream of layer 1
      T* c = C.data() + t * d;
      T* h = H1.data() + t * d;
      const T* ce = CT + z[t] * d;
      const T* cp = CT + (V + t) * d;
      const T* xe = XX + z[t] * d;
      const T* xp = XX + (V + t) * d;
      for (index_t j = 0; j < d; ++j) c[j] = ce[j] + cp[j], h[j] = xe[j] + xp[j];
    }
    for (index_t t = 0; t < s1; ++t) {  // layer-1 attention rows from the table
      const T* ge = G1 + z[t] * m1;
      const T* gp = G1 + (V + t) * m1;
      T* gg = g.data();  // the token columns of both rows (V), then the position columns as they are
      for (index_t j = 0; j < V; ++j) gg[j] = ge[j] + gp[j];
      T* b = B1.data() + t * n;
      for (index_t s = 0; s <= t; ++s) b[s] = gg[z[s]] + ge[V + s];
      normalize_causal_row<T>(b, gp + V, t + 1);
      for (index_t s = t + 1; s < std::min(n, (t / kCausalBlock + 1) * kCausalBlock); ++s) b[s] = 0;
    }
    lower_times<T>(m(B1, s1, n), m(C, s1, d), m(H1, s1, d), T(1));
    for (index_t i = 0; i < nr; ++i) std::copy(H1.data() + rows[i] * d, H1.data() + (rows[i] + 1) * d, Hr.data() + i * d);
    // layer 2 at the rows: q'_i = W_K2^T h1_i, scores q'_i . h1_s / sqrt d for s <= rows[i]
    blas::gemm_serial<T>(false, false, T(1), m(Hr, nr, d), w.WK2, T(0), m(Qk, nr, d));
    blas::gemm_serial<T>(false, true, inv_sqrt_d, m(Qk, nr, d), m(H1, s1, d), T(0), m(B2, nr, s1));
    for (index_t i = 0; i < nr; ++i) {
      T* b = B2.data() + i * s1;
      const index_t t = rows[i];
      normalize_causal_row<T>(b, nullptr, t + 1);
      for (index_t s = t + 1; s < s1; ++s) b[s] = 0;
    }
    blas::gemm_serial<T>(false, false, T(1), m(B2, nr, s1), m(H1, s1, d), T(0), m(Mx, nr, d));
    blas::gemm_serial<T>(false, true, T(1), m(Mx, nr, d), w.WV2, T(0), m(A2, nr, d));
  }

  void allocate_backward(const Grads<T>& gr) {
    const index_t m1 = V + n;
    H2.resize(n * d), Gs.resize(n * V), dH2.resize(n * d);
    if (gr.through_layer2()) {
      dA2.resize(n * d), dMx.resize(n * d), dB2.resize(n * n), dQk.resize(n * d), dH1.resize(n * d);
    }
    if (gr.through_layer1()) dB1.resize(n * n), dC.resize(n * d), drow.resize(m1), D.assign(m1 * m1, T(0));
    if (!gr.wE.empty()) dCT.assign(V * d, T(0)), dXX.assign(V * d, T(0));
    if (!gr.WK2.empty()) gWK2.assign(d * d, T(0));
    if (!gr.WO2.empty()) gWO2.assign(d * d, T(0));
    if (!gr.WU.empty()) gWU.assign(V * d, T(0));
  }

  // The loss sum_i weight * CE(W_U h2_i, z[rows[i] + 1]) of the forward's rows; with gradients,
  // their contributions added to the thread's accumulators.
  double loss_and_backward(T weight, const Grads<T>& gr) {
    if (nr == 0) return 0.0;
    const index_t s1 = span;
    // h2 = h1 + a2 W_O2^T, logits h2 W_U^T
    std::copy(Hr.begin(), Hr.begin() + nr * d, H2.begin());
    blas::gemm_serial<T>(false, true, T(1), m(A2, nr, d), w.WO2, T(1), m(H2, nr, d));
    blas::gemm_serial<T>(false, true, T(1), m(H2, nr, d), w.WU, T(0), m(Gs, nr, V));
    double loss = 0.0;
    for (index_t i = 0; i < nr; ++i) {
      T* r = Gs.data() + i * V;
      const index_t y = z[rows[i] + 1];
      T mx = r[0];
      for (index_t v = 1; v < V; ++v) mx = std::max(mx, r[v]);
      T sum = 0;
      for (index_t v = 0; v < V; ++v) sum += exp_nonpositive(r[v] - mx);
      const T lse = mx + std::log(sum);
      loss += double(weight) * double(lse - r[y]);
      if (gr.any()) {
        for (index_t v = 0; v < V; ++v) r[v] = weight * exp_nonpositive(r[v] - lse);
        r[y] -= weight;
      }
    }
    if (!gr.any()) return loss;
    blas::gemm_serial<T>(false, false, T(1), m(Gs, nr, V), w.WU, T(0), m(dH2, nr, d));
    if (!gr.WU.empty()) blas::gemm_serial<T>(true, false, T(1), m(Gs, nr, V), m(H2, nr, d), T(1), m(gWU, V, d));
    if (!gr.WO2.empty()) blas::gemm_serial<T>(true, false, T(1), m(dH2, nr, d), m(A2, nr, d), T(1), m(gWO2, d, d));
    if (!gr.through_layer2()) return loss;

    // layer 2: a2 = m W_V2^T, m = B2 H1, scores Qk H1^T / sqrt d
    std::fill(dH1.begin(), dH1.begin() + s1 * d, T(0));
    blas::gemm_serial<T>(false, false, T(1), m(dH2, nr, d), w.WO2, T(0), m(dA2, nr, d));
    blas::gemm_serial<T>(false, false, T(1), m(dA2, nr, d), w.WV2, T(0), m(dMx, nr, d));
    blas::gemm_serial<T>(false, true, T(1), m(dMx, nr, d), m(H1, s1, d), T(0), m(dB2, nr, s1));
    blas::gemm_serial<T>(true, false, T(1), m(B2, nr, s1), m(dMx, nr, d), T(1), m(dH1, s1, d));
    for (index_t i = 0; i < nr; ++i) {  // softmax backward, 1/sqrt d folded in
      const T* b = B2.data() + i * s1;
      T* db = dB2.data() + i * s1;
      const index_t t = rows[i];
      const T dot = row_dot(b, db, t + 1);
      for (index_t s = 0; s <= t; ++s) db[s] = b[s] * (db[s] - dot) * inv_sqrt_d;
      for (index_t s = t + 1; s < s1; ++s) db[s] = 0;
    }
    blas::gemm_serial<T>(false, false, T(1), m(dB2, nr, s1), m(H1, s1, d), T(0), m(dQk, nr, d));
    blas::gemm_serial<T>(true, false, T(1), m(dB2, nr, s1), m(Qk, nr, d), T(1), m(dH1, s1, d));
    if (!gr.WK2.empty()) blas::gemm_serial<T>(true, false, T(1), m(Hr, nr, d), m(dQk, nr, d), T(1), m(gWK2, d, d));
    // the rows' own h1: the residual dh2 and the query side dq' W_K2^T
    blas::gemm_serial<T>(false, true, T(1), m(dQk, nr, d), w.WK2, T(1), m(dH2, nr, d));
    for (index_t i = 0; i < nr; ++i) {
      T* dst = dH1.data() + rows[i] * d;
      const T* src = dH2.data() + i * d;
      for (index_t j = 0; j < d; ++j) dst[j] += src[j];
    }
    if (!gr.through_layer1()) return loss;

    // layer 1: h1 = x + B1 C, scores from the table G1
    const index_t m1 = V + n;
    lower_of_product<T>(m(dH1, s1, d), m(C, s1, d), m(dB1, s1, n));
    std::fill(dC.begin(), dC.begin() + s1 * d, T(0));
    lower_transposed_times<T>(m(B1, s1, n), m(dH1, s1, d), m(dC, s1, d));
    for (index_t t = 0; t < s1; ++t) {
      const T* b = B1.data() + t * n;
      const T* db = dB1.data() + t * n;
      const T dot = row_dot(b, db, t + 1);
      std::fill(drow.begin(), drow.end(), T(0));
      for (index_t s = 0; s <= t; ++s) {
        const T ds = b[s] * (db[s] - dot);
        drow[z[s]] += ds, drow[V + s] += ds;
      }
      T* de = D.data() + z[t] * m1;
      T* dp = D.data() + (V + t) * m1;
      for (index_t j = 0; j < m1; ++j) de[j] += drow[j], dp[j] += drow[j];
    }
    if (!gr.wE.empty()) {  // dX's rows of wE: the residual and the values (the scores' part from D)
      for (index_t t = 0; t < s1; ++t) {
        T* de = dXX.data() + z[t] * d;
        T* dc = dCT.data() + z[t] * d;
        const T* a = dH1.data() + t * d;
        const T* c = dC.data() + t * d;
        for (index_t j = 0; j < d; ++j) de[j] += a[j], dc[j] += c[j];
      }
    }
    return loss;
  }
};

// Per-thread passes, built lazily inside the parallel region. Each thread takes one contiguous
// block of sequences (static schedule), so that the per-thread gradient sums, and a run, are the
// same from call to call at a given thread count (a dynamic schedule changed float32 runs).
template <class T, class F>
void for_each_sequence(const Weights<T>& w, const Layer1Tables<T>& tab, index_t B, std::vector<SequencePass<T>*>& passes,
                       F&& f) {
  const int threads = threads_for(B, w.n() * w.n() * w.d());
  passes.assign(std::max(threads, 1), nullptr);
#pragma omp parallel num_threads(threads)
  {
    const int tid = thread_num();
    passes[tid] = new SequencePass<T>(w, tab);
#pragma omp for schedule(static)
    for (index_t b = 0; b < B; ++b) f(*passes[tid], b);
  }
}

// The frozen forward of the W_O2-only study: for every row of `rows`, h1 and the layer-2
// attention output a2 (Hr, A2: (total rows) x d, sequence b's rows from rows.ptr[b]).
template <class T>
void rows_forward(const Weights<T>& w, MatrixView<const std::int64_t> z, Rows rows, MatrixView<T> Hr,
                  MatrixView<T> A2) {
  const Layer1Tables<T> tab(w);
  std::vector<SequencePass<T>*> passes;
  const index_t d = w.d();
  for_each_sequence<T>(w, tab, z.rows, passes, [&](SequencePass<T>& p, index_t b) {
    const index_t r0 = rows.ptr[b], nr = rows.ptr[b + 1] - r0;
    p.forward(z.row(b), rows.idx + r0, nr);
    for (index_t i = 0; i < nr; ++i) {
      std::copy(p.Hr.data() + i * d, p.Hr.data() + (i + 1) * d, Hr.row(r0 + i));
      std::copy(p.A2.data() + i * d, p.A2.data() + (i + 1) * d, A2.row(r0 + i));
    }
  });
  for (auto* p : passes) delete p;
}

// The W_O^2-only study's memory step for R runs that share one frozen forward (docs/transformer.md):
// Hr, A2 (n x d) the loss rows' h1 and layer-2 attention outputs, y (n) their targets. For run
// r, the memory reads out Q = Hr + A2 W_r (W_r = W_O2^T, d x d) through W_U with row weight
// `weight`: softmax_xent_grad gives H, the gradient is the rank update's product A2^T H, written
// to G[r] (d x d), and loss[r] = sum_i weight * CE_i. Rows go in tiles that every run reads in
// turn while they are in cache, each thread with its own accumulators.
template <class T>
void wo2_grads(MatrixView<const T> Hr, MatrixView<const T> A2, MatrixView<const T> WU, const std::int64_t* y,
               const T* W, index_t R, T weight, T* G, double* loss) {
  constexpr index_t kTile = 256;
  const index_t n = Hr.rows, d = Hr.cols, V = WU.rows, dd = d * d;
  const index_t tiles = (n + kTile - 1) / kTile;
  const int threads = std::max(1, threads_for(tiles, kTile * R * 4 * d * std::max(d, V)));
  std::vector<std::vector<T>> acc(threads);
  std::vector<std::vector<double>> lacc(threads);
#pragma omp parallel num_threads(threads)
  {
    const int tid = thread_num();
    acc[tid].assign(R * dd, T(0));
    lacc[tid].assign(R, 0.0);
    std::vector<T> Q(kTile * d), H(kTile * d), lse(kTile), zy(kTile), zo(kTile), w(kTile, weight);
    SoftmaxXentWorkspace<T> ws;
#pragma omp for schedule(static)
    for (index_t t = 0; t < tiles; ++t) {
      const index_t r0 = t * kTile, rows = std::min(kTile, n - r0);
      const MatrixView<const T> A = A2.row_block(r0, rows);
      MatrixView<T> Qv(Q.data(), rows, d), Hv(H.data(), rows, d);
      for (index_t r = 0; r < R; ++r) {
        for (index_t i = 0; i < rows; ++i) std::copy(Hr.row(r0 + i), Hr.row(r0 + i) + d, Qv.row(i));
        blas::gemm_serial<T>(false, false, T(1), A, MatrixView<const T>(W + r * dd, d, d), T(1), Qv);
        SoftmaxXentGradParams<T> p{MatrixView<const T>(Qv), WU, y + r0, w.data(), Hv, lse.data(), zy.data(),
                                   zo.data()};
        softmax_xent_grad(p, ws);  // serial: called inside this parallel region
        blas::gemm_serial<T>(true, false, T(1), A, MatrixView<const T>(Hv), T(1),
                             MatrixView<T>(acc[tid].data() + r * dd, d, d));
        double l = 0.0;
        for (index_t i = 0; i < rows; ++i) l += double(lse[i]) - double(zy[i]);
        lacc[tid][r] += double(weight) * l;
      }
    }
  }
  for (index_t r = 0; r < R; ++r) {
    loss[r] = 0.0;
    std::fill(G + r * dd, G + (r + 1) * dd, T(0));
    for (int k = 0; k < threads; ++k) {
      loss[r] += lacc[k][r];
      for (index_t j = 0; j < dd; ++j) G[r * dd + j] += acc[k][r * dd + j];
    }
  }
}

// The loss sum over rows of weight * CE, and (where `gr` asks) its gradients, written to gr
// (overwritten, not accumulated).
template <class T>
double loss_and_grads(const Weights<T>& w, MatrixView<const std::int64_t> z, Rows rows, T weight, const Grads<T>& gr) {
  const Layer1Tables<T> tab(w);
  const index_t V = w.V(), n = w.n(), d = w.d(), m1 = V + n;
  std::vector<SequencePass<T>*> passes;
  std::vector<double> partial(std::max(1, max_threads()) + 1, 0.0);
  for_each_sequence<T>(w, tab, z.rows, passes, [&](SequencePass<T>& p, index_t b) {
    if (p.H2.empty()) p.allocate_backward(gr);
    const index_t r0 = rows.ptr[b];
    p.forward(z.row(b), rows.idx + r0, rows.ptr[b + 1] - r0);
    partial[thread_num()] += p.loss_and_backward(weight, gr);
  });
  double loss = 0.0;
  for (double x : partial) loss += x;
  auto sum_into = [&](MatrixView<T> out, std::vector<T> SequencePass<T>::*acc, index_t r, index_t c) {
    for (index_t i = 0; i < r; ++i) std::fill(out.row(i), out.row(i) + c, T(0));
    for (auto* p : passes) {
      if (!p || (p->*acc).empty()) continue;
      for (index_t i = 0; i < r; ++i)
        for (index_t j = 0; j < c; ++j) out(i, j) += (p->*acc)[i * c + j];
    }
  };
  if (!gr.WK2.empty()) sum_into(gr.WK2, &SequencePass<T>::gWK2, d, d);
  if (!gr.WO2.empty()) sum_into(gr.WO2, &SequencePass<T>::gWO2, d, d);
  std::vector<T> Dsum, tmp;
  if (gr.through_layer1()) {
    Dsum.assign(m1 * m1, T(0));
    sum_into(MatrixView<T>(Dsum.data(), m1, m1), &SequencePass<T>::D, m1, m1);
    // dWK1 = XX^T D XX / sqrt d
    tmp.resize(m1 * d);
    blas::gemm<T>(false, false, T(1), MatrixView<const T>(Dsum.data(), m1, m1), tab.xx(), T(0),
                  MatrixView<T>(tmp.data(), m1, d));
    if (!gr.WK1.empty())
      blas::gemm<T>(true, false, T(1.0 / std::sqrt(double(d))), tab.xx(), MatrixView<const T>(tmp.data(), m1, d), T(0),
                    gr.WK1);
  }
  if (!gr.wE.empty()) {
    // wE's rows of dXX: the residual, dCT VO, and (D XX W_K1^T + D^T XX W_K1) / sqrt d
    sum_into(gr.wE, &SequencePass<T>::dXX, V, d);
    std::vector<T> dct(V * d, T(0));
    sum_into(MatrixView<T>(dct.data(), V, d), &SequencePass<T>::dCT, V, d);
    blas::gemm<T>(false, false, T(1), MatrixView<const T>(dct.data(), V, d), MatrixView<const T>(tab.VO.data(), d, d),
                  T(1), gr.wE);
    const T s = T(1.0 / std::sqrt(double(d)));
    blas::gemm<T>(false, true, s, MatrixView<const T>(tmp.data(), V, d), w.WK1, T(1), gr.wE);  // D XX W_K1^T
    std::vector<T> tmpT(m1 * d);  // D^T XX
    blas::gemm<T>(true, false, T(1), MatrixView<const T>(Dsum.data(), m1, m1), tab.xx(), T(0),
                  MatrixView<T>(tmpT.data(), m1, d));
    blas::gemm<T>(false, false, s, MatrixView<const T>(tmpT.data(), V, d), w.WK1, T(1), gr.wE);
  }
  if (!gr.WU.empty()) sum_into(gr.WU, &SequencePass<T>::gWU, V, d);
  for (auto* p : passes) delete p;
  return loss;
}

}  // namespace fastmem::transformer
