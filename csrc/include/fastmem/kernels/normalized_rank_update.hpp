// The update of Adam with betas (0, 0) (m = g, v = g^2: the elementwise g / (|g| + eps))
// or of sign descent, for the dense rank-b gradient g = Eb^T H of a batch, fused with the
// next step's read-out:
//   W  <- decay W - lr s(EbT H)       (EbT = Eb^T: d x b, H: b x d)
//   Qn  = En W                        (the next batch's rows, from W as written)
// One pass over W per step. The d x d gradient is never stored, and the read-out that
// would be a second pass over W (at d = 1000, W is 4 MB and streams from L3: the pass is
// what a step costs) is taken while each tile of W is in registers. A tile is kRows rows
// x kVecs vectors; G's tile is a small-inner-dimension GEMM accumulated in registers.
// Threads split the columns: Qn's columns depend on W's same columns only.
#pragma once
#include <algorithm>
#include <cmath>

#include "../errors.hpp"
#include "../parallel.hpp"
#include "../simd.hpp"
#include "../static_switch.hpp"
#include "../views.hpp"

namespace fastmem {

// g / (|g| + eps), or sign(g): the scalar twin of simd::normalized.
template <class T>
inline T normalized_update(T g, T eps, bool sign) {
  return sign ? static_cast<T>((g > T(0)) - (g < T(0))) : g / (std::fabs(g) + eps);
}

namespace detail {

// The step's scalars: decay = 1 - lr wd.
template <class T>
struct StepScalars {
  T lr, eps, decay;
};

// One tile: w (R rows, stride ldw) x NV vectors; ebt / ent: the R rows of EbT / EnT (row
// strides lde, ldn); hs (b x NV L, stride ldh) and qs (bn x NV L, stride ldq): the same
// columns of H and Qn. Decay false: decay is 1 (no weight decay), its multiply skipped.
template <class T, int R, int NV, bool Sign, bool Decay>
FASTMEM_ALWAYS_INLINE void normalized_tile(T* w, index_t ldw, const T* ebt, index_t lde, index_t b, const T* hs,
                                           index_t ldh, const T* ent, index_t ldn, index_t bn, T* qs, index_t ldq,
                                           const StepScalars<T>& k) {
  using vt = simd::vec<T>;
  constexpr index_t L = simd::lanes<T>;
  vt g[R][NV] = {};
  for (index_t r = 0; r < b; ++r) {
    vt h[NV];
    for (int v = 0; v < NV; ++v) h[v] = simd::load(hs + r * ldh + v * L);
    for (int i = 0; i < R; ++i) {
      const vt e = simd::splat(ebt[i * lde + r]);
      for (int v = 0; v < NV; ++v) g[i][v] += e * h[v];
    }
  }
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) {
      T* p = w + i * ldw + v * L;
      const vt old = Decay ? k.decay * simd::load(p) : simd::load(p);
      g[i][v] = old - k.lr * simd::normalized<Sign>(g[i][v], k.eps);  // g now holds W's tile
      simd::store(p, g[i][v]);
    }
  for (index_t r = 0; r < bn; ++r)
    for (int v = 0; v < NV; ++v) {  // two chains of multiply-adds over the rows, not one
      vt q[2] = {};
      for (int i = 0; i < R; ++i) q[i % 2] += simd::splat(ent[i * ldn + r]) * g[i][v];
      simd::store(qs + r * ldq + v * L, simd::load(qs + r * ldq + v * L) + (q[0] + q[1]));
    }
}

// Rows [i0, i0 + R * n) of columns [c0, c1) in tiles of R rows, n as many as fit; returns
// the first row left.
template <class T, int R, int NV, bool Sign, bool Decay>
index_t normalized_rows(MatrixView<T> W, MatrixView<const T> EbT, MatrixView<const T> H, MatrixView<const T> EnT,
                        MatrixView<T> Qn, index_t i0, index_t c0, index_t c1, const StepScalars<T>& k) {
  constexpr index_t S = NV * simd::lanes<T>;
  const index_t b = H.rows, bn = Qn.rows;
  index_t i = i0;
  for (; i + R <= W.rows; i += R)
    for (index_t c = c0; c < c1; c += S)
      normalized_tile<T, R, NV, Sign, Decay>(W.row(i) + c, W.stride, EbT.row(i), EbT.stride, b, H.ptr + c,
                                             H.stride, bn ? EnT.row(i) : nullptr, EnT.stride, bn, Qn.ptr + c,
                                             Qn.stride, k);
  return i;
}

// Columns [c0, c1) (whole strips) of the update and read-out: W's rows in order, so that
// W streams; H's and Qn's columns stay in cache (b d and bn d elements). Taller tiles for
// more batch rows: a tile loads each vector of H and Qn once for its R rows (one thread,
// AVX-512, d = 1000: 6 rows best at b + bn = 10 and 20, 10 rows at 40 and 76).
template <class T, int NV, bool Sign, bool Decay>
void normalized_columns(MatrixView<T> W, MatrixView<const T> EbT, MatrixView<const T> H, MatrixView<const T> EnT,
                        MatrixView<T> Qn, index_t c0, index_t c1, const StepScalars<T>& k) {
  const index_t i = H.rows + Qn.rows <= 24
                        ? normalized_rows<T, 6, NV, Sign, Decay>(W, EbT, H, EnT, Qn, 0, c0, c1, k)
                        : normalized_rows<T, 10, NV, Sign, Decay>(W, EbT, H, EnT, Qn, 0, c0, c1, k);
  normalized_rows<T, 1, NV, Sign, Decay>(W, EbT, H, EnT, Qn, i, c0, c1, k);
}

// Sign descent or Adam(0, 0); a decay of exactly 1 (no weight decay) skips its multiply.
template <class T, int NV>
void normalized_columns(bool sign, MatrixView<T> W, MatrixView<const T> EbT, MatrixView<const T> H,
                        MatrixView<const T> EnT, MatrixView<T> Qn, index_t c0, index_t c1, const StepScalars<T>& k) {
  bool_switch(sign, [&](auto Sign) {
    bool_switch(k.decay != T(1), [&](auto Decay) {
      normalized_columns<T, NV, decltype(Sign)::value, decltype(Decay)::value>(W, EbT, H, EnT, Qn, c0, c1, k);
    });
  });
}

}  // namespace detail

// EnT (d x bn) and Qn (bn x d) may be empty: no read-out. sign: sign descent. W, H and Qn
// hold whole vectors of columns (pad them with zero columns: those of W stay zero, those
// of Qn read zero), in strips of two vectors and then one.
template <class T>
void normalized_rank_update(MatrixView<T> W, MatrixView<const T> EbT, MatrixView<const T> H, T lr, T eps, T decay,
                            bool sign, MatrixView<const T> EnT, MatrixView<T> Qn) {
  constexpr int kVecs = simd::kBytes == 64 ? 2 : 1;
  constexpr index_t kStrip = kVecs * simd::lanes<T>;
  const index_t d = W.rows, cols = W.cols, b = H.rows, bn = EnT.empty() ? 0 : EnT.cols;
  FASTMEM_CHECK_ARG(cols % simd::lanes<T> == 0, "W's columns must be whole vectors (zero-padded)");
  const index_t strips = cols / kStrip;
  const detail::StepScalars<T> k{lr, eps, decay};
  for (index_t r = 0; r < bn; ++r) std::fill(Qn.row(r), Qn.row(r) + cols, T(0));
  parallel_blocks(strips + 1, threads_for(strips + 1, d * kStrip * (b + bn + 4)), [&](int, index_t s0, index_t s1) {
    const index_t c0 = s0 * kStrip, c1 = std::min(s1, strips) * kStrip;
    if (c1 > c0) detail::normalized_columns<T, kVecs>(sign, W, EbT, H, EnT, Qn, c0, c1, k);
    if (s1 == strips + 1 && cols > strips * kStrip)  // one vector after the last strip
      detail::normalized_columns<T, 1>(sign, W, EbT, H, EnT, Qn, strips * kStrip, cols, k);
  });
}

}  // namespace fastmem
