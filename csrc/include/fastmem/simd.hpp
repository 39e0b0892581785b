// Fixed-width vectors for the few loops whose register tiling the auto-vectoriser does
// not find (the normalised updates): GCC/Clang vector extensions, as wide as the target
// compiled for (AVX-512: 64 bytes, AVX: 32, else 16), lowered by the compiler elsewhere.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "views.hpp"

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

// The register tiles are written as small functions that must be inlined to stay in registers.
#if defined(__GNUC__)
#define FASTMEM_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FASTMEM_ALWAYS_INLINE inline
#endif

namespace fastmem::simd {

#if defined(__AVX512F__)
constexpr int kBytes = 64;
#elif defined(__AVX__)
constexpr int kBytes = 32;
#else
constexpr int kBytes = 16;
#endif

template <class T>
struct VecOf {
  typedef T type __attribute__((vector_size(kBytes)));
};
template <class T>
using vec = typename VecOf<T>::type;
template <class T>
constexpr int lanes = kBytes / int(sizeof(T));

template <class T>
inline vec<T> load(const T* p) {
  vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
inline void store(T* p, vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}
template <class T>
inline vec<T> splat(T x) {
  return x - vec<T>{};  // one broadcast: x - 0 is x (0 + x is not, for x = -0: an addition)
}
// The sum of N lanes by halves, lane l plus lane l + N/2, recursively (the reduce intrinsics'
// order), each half a narrower vector: extracts and adds in registers, where a loop over the
// stored lanes would add one lane at a time.
template <class T, int N>
FASTMEM_ALWAYS_INLINE T sum_halves(const T* lane) {
  if constexpr (N == 1) {
    return lane[0];
  } else {
    typedef T half __attribute__((vector_size(N / 2 * sizeof(T))));
    half lo, hi;
    std::memcpy(&lo, lane, sizeof lo);
    std::memcpy(&hi, lane + N / 2, sizeof hi);
    lo += hi;
    T folded[N / 2];
    std::memcpy(folded, &lo, sizeof lo);
    return sum_halves<T, N / 2>(folded);
  }
}

template <class T>
inline T sum(const vec<T>& v) {
  T h[lanes<T>];
  std::memcpy(h, &v, sizeof v);
  return sum_halves<T, lanes<T>>(h);
}

// sum_i a[i] b[i], vectorised (a plain loop is not: the compiler may not reorder the sum).
template <class T>
inline T dot(const T* a, const T* b, index_t n) {
  vec<T> acc = {};
  index_t i = 0;
  for (; i + lanes<T> <= n; i += lanes<T>) acc += load(a + i) * load(b + i);
  T s = sum<T>(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// sum_i a[i] b[i] accumulated in double (float inputs widened lane by lane), in vector
// lanes: a scalar double loop waits on each addition's latency (1,000 of them a row).
template <class T>
inline double dot_double(const T* a, const T* b, index_t n) {
  constexpr int W = kBytes / int(sizeof(double));  // double lanes
  typedef T narrow __attribute__((vector_size(W * sizeof(T))));
  vec<double> acc[2] = {};
  index_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W)
    for (int c = 0; c < 2; ++c) {
      narrow x, y;
      std::memcpy(&x, a + i + c * W, sizeof x);
      std::memcpy(&y, b + i + c * W, sizeof y);
      acc[c] += __builtin_convertvector(x, vec<double>) * __builtin_convertvector(y, vec<double>);
    }
  double s = sum<double>(acc[0] + acc[1]);
  for (; i < n; ++i) s += double(a[i]) * double(b[i]);
  return s;
}

// A copy of a matrix whose rows are whole aligned vectors, zero-padded on the right: a
// kernel whose zero columns contribute nothing needs no scalar tail, and no load of a row
// splits a cache line.
template <class T>
struct PaddedRows {
  std::vector<vec<T>> data;
  index_t rows = 0, cols = 0, vecs = 0;
  PaddedRows() = default;
  explicit PaddedRows(MatrixView<const T> A) { assign(A); }
  // rows x cols of zeros
  void reset(index_t r, index_t c) {
    rows = r;
    cols = c;
    vecs = (c + lanes<T> - 1) / lanes<T>;
    data.assign(std::size_t(rows * vecs), vec<T>{});
  }
  void assign(MatrixView<const T> A) {
    reset(A.rows, A.cols);
    for (index_t i = 0; i < rows; ++i)
      std::memcpy(static_cast<void*>(data.data() + i * vecs), A.row(i), sizeof(T) * std::size_t(cols));
  }
  const vec<T>* row(index_t i) const { return data.data() + i * vecs; }
  MatrixView<T> view() { return {reinterpret_cast<T*>(data.data()), rows, cols, vecs * lanes<T>}; }
  MatrixView<T> padded_view() { return {reinterpret_cast<T*>(data.data()), rows, vecs * lanes<T>}; }
  void copy_to(MatrixView<T> A) const {
    for (index_t i = 0; i < rows; ++i) std::memcpy(A.row(i), row(i), sizeof(T) * std::size_t(cols));
  }
};

// |v|: the sign bit cleared (one AND, where a compare and blend would take three).
template <class T>
inline vec<T> abs(vec<T> v) {
  using I = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
  using vi = typename VecOf<I>::type;
  return reinterpret_cast<vec<T>>(reinterpret_cast<vi>(v) & ~(I(1) << (8 * sizeof(T) - 1)));
}

// 1 / x. float: the hardware estimate and one Newton step (within 2 ulp; a division
// costs as much as all the multiply-adds of the normalised updates); double: divided.
inline vec<float> reciprocal(vec<float> x) {
#if defined(__AVX512F__)
  const __m512 v = reinterpret_cast<__m512>(x);  // the masked form: GCC 12's plain one warns
  const vec<float> r = reinterpret_cast<vec<float>>(_mm512_mask_rcp14_ps(v, __mmask16(0xFFFF), v));
  return r * (2.0f - x * r);
#elif defined(__AVX__)
  const vec<float> r = reinterpret_cast<vec<float>>(_mm256_rcp_ps(reinterpret_cast<__m256>(x)));
  return r * (2.0f - x * r);
#else
  return 1.0f / x;
#endif
}
inline vec<double> reciprocal(vec<double> x) { return 1.0 / x; }

// The stateless normalised update of Adam with betas (0, 0), g / (|g| + eps), or sign(g).
template <bool Sign, class T>
inline vec<T> normalized(vec<T> g, T eps) {
  const vec<T> zero = {}, one = splat(T(1));
  if constexpr (Sign)
    return (g > zero ? one : zero) - (g < zero ? one : zero);
  else
    return g * reciprocal(abs<T>(g) + eps);
}

// For float32, flush-to-zero and denormals-are-zero in this thread while in scope. A value
// below FLT_MIN (the probability of a wrong class in a confident model, 1e-40) would make
// every multiply-add it enters ~100x slower (a trained learnable model at lr 0.1 ran 7x
// slower per step); such values are far below float32's resolution of what they are added to.
template <class T>
struct FlushDenormals {
#if defined(__SSE__)
  unsigned int saved = 0;
  FlushDenormals() {
    if constexpr (sizeof(T) == 4) {
      saved = _mm_getcsr();
      _mm_setcsr(saved | 0x8040u);  // FTZ | DAZ
    }
  }
  ~FlushDenormals() {
    if constexpr (sizeof(T) == 4) _mm_setcsr(saved);
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;
#endif
};

}  // namespace fastmem::simd
