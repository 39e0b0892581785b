// Normal(0, 1) deviates from a counter-based stream, for initial memories: a d x d matrix
// at d = 1000 costs ~1 ms here, where numpy's generator takes ~10 ns a deviate (10 ms, more
// than many whole runs of the scaling-law grid). Any range of the stream is made on its own
// (threads, resumption), and the numpy and numba backends compute the same values.
//
// The stream of a seed: block k holds 16 deviates, the Box-Muller pairs of the 64-bit words
// w_l = CounterRng(seed ^ kNormalStream).bits(8 k + l), l < 8, with u1 = (hi32(w) + 1/2) / 2^32
// and u2 = lo32(w) / 2^32: deviate 16 k + l is r cos(2 pi u2), deviate 16 k + 8 + l is
// r sin(2 pi u2), r = sqrt(-2 log u1) (|deviate| < 6.7). log, sin and cos are evaluated by
// series in double precision (within 1e-11 of the exact transform).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "parallel.hpp"
#include "rng.hpp"
#include "views.hpp"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace fastmem {

// Keeps the normal stream of a seed apart from its token stream (rng.hpp).
constexpr std::uint64_t kNormalStream = 0x4E4F524D414C5354ULL;

namespace detail {

typedef double f64x8 __attribute__((vector_size(64)));
typedef std::uint64_t u64x8 __attribute__((vector_size(64)));
typedef std::int64_t i64x8 __attribute__((vector_size(64)));

// The helpers work in place on references: a 64-byte vector passed by value would make
// GCC warn about its ABI in builds without AVX-512.
inline void splitmix64_x8(u64x8& z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
}

inline void sqrt_x8(f64x8& x) {
#if defined(__AVX512F__)
  const __m512d v = reinterpret_cast<__m512d>(x);  // the masked form: GCC 12's plain one warns
  x = reinterpret_cast<f64x8>(_mm512_mask_sqrt_pd(v, __mmask8(0xFF), v));
#else
  for (int l = 0; l < 8; ++l) x[l] = std::sqrt(x[l]);
#endif
}

// log(u) for u in (0, 1]: u = m 2^e with m in [1/sqrt 2, sqrt 2), log m = 2 atanh(s),
// s = (m - 1) / (m + 1), |s| < 0.172, by its series to s^17.
inline void log_x8(f64x8& u) {
  const u64x8 bits = reinterpret_cast<u64x8>(u);
  i64x8 e = reinterpret_cast<i64x8>(bits >> 52) - 1023;
  f64x8 m = reinterpret_cast<f64x8>((bits & 0x000FFFFFFFFFFFFFULL) | 0x3FF0000000000000ULL);
  const i64x8 big = m > 1.4142135623730951;
  m = big ? m * 0.5 : m;
  e = big ? e + 1 : e;
  const f64x8 s = (m - 1.0) / (m + 1.0), s2 = s * s;
  f64x8 p = s2 * (1.0 / 17) + 1.0 / 15;
  p = p * s2 + 1.0 / 13;
  p = p * s2 + 1.0 / 11;
  p = p * s2 + 1.0 / 9;
  p = p * s2 + 1.0 / 7;
  p = p * s2 + 1.0 / 5;
  p = p * s2 + 1.0 / 3;
  p = p * s2 + 1.0;
  u = __builtin_convertvector(e, f64x8) * 0.6931471805599453 + 2.0 * s * p;
}

// (cos, sin)(2 pi u) for u in [0, 1): the nearest quarter turn q / 4 taken out, then the
// Taylor series on [-pi/4, pi/4] (to x^13 and x^14).
inline void sincos_turns_x8(const f64x8& u, f64x8& c, f64x8& s) {
  const i64x8 q = __builtin_convertvector(u * 4.0 + 0.5, i64x8);
  const f64x8 x = (u - 0.25 * __builtin_convertvector(q, f64x8)) * 6.283185307179586, x2 = x * x;
  f64x8 sn = x2 * (1.0 / 6227020800) - 1.0 / 39916800;
  sn = sn * x2 + 1.0 / 362880;
  sn = sn * x2 - 1.0 / 5040;
  sn = sn * x2 + 1.0 / 120;
  sn = sn * x2 - 1.0 / 6;
  sn = (sn * x2 + 1.0) * x;
  f64x8 cs = x2 * (-1.0 / 87178291200) + 1.0 / 479001600;
  cs = cs * x2 - 1.0 / 3628800;
  cs = cs * x2 + 1.0 / 40320;
  cs = cs * x2 - 1.0 / 720;
  cs = cs * x2 + 1.0 / 24;
  cs = cs * x2 - 0.5;
  cs = cs * x2 + 1.0;
  const i64x8 k = q & 3;  // a quarter turn: (c, s) -> (-s, c)
  const i64x8 swap = (k & 1) != 0, neg_c = (k == 1) | (k == 2), neg_s = k >= 2;
  c = swap ? sn : cs;
  s = swap ? cs : sn;
  c = neg_c ? -c : c;
  s = neg_s ? -s : s;
}

// The 16 deviates of block k: c (deviates 16 k .. 16 k + 7) and s (the next 8).
inline void normal_block(const CounterRng& rng, std::uint64_t k, f64x8& c, f64x8& s) {
  u64x8 counter;
  for (int l = 0; l < 8; ++l) counter[l] = 8 * k + std::uint64_t(l);
  splitmix64_x8(counter);
  u64x8 w = rng.key ^ counter;
  splitmix64_x8(w);
  f64x8 r = (__builtin_convertvector(w >> 32, f64x8) + 0.5) * 0x1.0p-32;  // u1, then r
  const f64x8 u2 = __builtin_convertvector(w & 0xFFFFFFFFULL, f64x8) * 0x1.0p-32;
  log_x8(r);
  r *= -2.0;
  sqrt_x8(r);
  sincos_turns_x8(u2, c, s);
  c *= r;
  s *= r;
}

template <class T>
inline void store_x8(T* out, const f64x8& x) {
  typedef T t8 __attribute__((vector_size(8 * sizeof(T))));
  const t8 v = __builtin_convertvector(x, t8);
  std::memcpy(out, &v, sizeof v);
}

}  // namespace detail

// out[i] = scale * deviate (first + i) of the seed's stream, i < n.
template <class T>
void normal_fill(T* out, index_t n, std::uint64_t seed, index_t first, double scale) {
  if (n <= 0) return;
  const CounterRng rng(seed ^ kNormalStream);
  const index_t k0 = first / 16, k1 = (first + n + 15) / 16;
  parallel_blocks(k1 - k0, threads_for(k1 - k0, 16 * 64), [&](int, index_t b0, index_t b1) {
    detail::f64x8 c, s;
    for (index_t k = k0 + b0; k < k0 + b1; ++k) {
      detail::normal_block(rng, std::uint64_t(k), c, s);
      c *= scale;
      s *= scale;
      const index_t lo = std::max(first, 16 * k), hi = std::min(first + n, 16 * k + 16);
      if (hi - lo == 16) {
        detail::store_x8(out + lo - first, c);
        detail::store_x8(out + lo - first + 8, s);
      } else {
        for (index_t i = lo; i < hi; ++i) {
          const index_t l = i - 16 * k;
          out[i - first] = static_cast<T>(l < 8 ? c[l] : s[l - 8]);
        }
      }
    }
  });
}

}  // namespace fastmem
