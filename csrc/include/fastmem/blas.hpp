// Dense products. Large GEMMs go to a CBLAS when the embedder provides one
// (define FASTMEM_USE_CBLAS, and FASTMEM_CBLAS_PREFIX for a prefixed build such
// as scipy-openblas's "scipy_"); small ones, and every product when no BLAS is
// configured, use the plain loops below, which are exact but untuned. Products of a
// few rows with a large B (a batch's read-outs E_b W) stream B once: gemm_few_rows.
#pragma once
#include <algorithm>
#include <cstdint>

#include "parallel.hpp"
#include "simd.hpp"
#include "views.hpp"

#ifdef FASTMEM_USE_CBLAS
#ifndef FASTMEM_CBLAS_PREFIX
#define FASTMEM_CBLAS_PREFIX
#endif
#define FASTMEM_CAT_(a, b) a##b
#define FASTMEM_CAT(a, b) FASTMEM_CAT_(a, b)
#define FASTMEM_CBLAS(name) FASTMEM_CAT(FASTMEM_CBLAS_PREFIX, name)
// Declared here rather than through <cblas.h> so that any CBLAS (OpenBLAS,
// MKL, BLIS, a prefixed build) links without its header; the enums of the
// CBLAS standard are ints: RowMajor 101, NoTrans 111, Trans 112.
extern "C" {
void FASTMEM_CBLAS(cblas_sgemm)(int, int, int, int, int, int, float, const float*, int, const float*,
                                int, float, float*, int);
void FASTMEM_CBLAS(cblas_dgemm)(int, int, int, int, int, int, double, const double*, int,
                                const double*, int, double, double*, int);
}
#endif

namespace fastmem {
namespace blas {

inline const char* name() {
#ifdef FASTMEM_USE_CBLAS
  return "cblas";
#else
  return "builtin";
#endif
}

// Below this many multiply-adds a call into BLAS costs more than it saves.
constexpr index_t kSmallGemm = 4096;

template <class T>
void gemm_loops(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha,
                MatrixView<const T> A, MatrixView<const T> B, T beta, MatrixView<T> C) {
  auto a_at = [&](index_t i, index_t p) { return trans_a ? A(p, i) : A(i, p); };
  for (index_t i = 0; i < m; ++i) {
    T* c = C.row(i);
    if (beta == T(0)) {
      for (index_t j = 0; j < n; ++j) c[j] = T(0);
    } else if (beta != T(1)) {
      for (index_t j = 0; j < n; ++j) c[j] *= beta;
    }
    if (trans_b) {
      for (index_t j = 0; j < n; ++j) {
        const T* bj = B.row(j);
        T acc = T(0);
        for (index_t p = 0; p < k; ++p) acc += a_at(i, p) * bj[p];
        c[j] += alpha * acc;
      }
    } else {
      for (index_t p = 0; p < k; ++p) {
        const T a = alpha * a_at(i, p);
        if (a == T(0)) continue;
        const T* bp = B.row(p);
        for (index_t j = 0; j < n; ++j) c[j] += a * bp[j];
      }
    }
  }
}

// Products of few rows with a large B, C (m x n) = alpha A B + beta C, B (k x n): B streams
// once in row order, kB rows at a time, each vector loaded once for kA rows of C (C's rows
// stay in cache). A BLAS packs all of B for each call: at m = 5, n = k = 1000 (a batch's
// read-outs E_b W) OpenBLAS took 0.33 ms where this takes 0.17 (one thread, AVX-512; equal at
// m = 16, slower beyond; OpenBLAS faster where B fits in L2, d = 333).
template <class T>
bool few_rows(index_t m, index_t n, index_t k) {
  return m <= 12 && n >= 4 * simd::lanes<T> && k * n * index_t(sizeof(T)) >= (index_t(1) << 19);
}

template <class T>
void gemm_few_rows(index_t m, index_t n, index_t k, T alpha, MatrixView<const T> A, MatrixView<const T> B, T beta,
                   MatrixView<T> C) {
  using vt = simd::vec<T>;
  constexpr index_t L = simd::lanes<T>;
  constexpr int kA = 4, kB = 6;
  const index_t nv = n / L * L;
  for (index_t i = 0; i < m; ++i) {
    T* c = C.row(i);
    for (index_t j = 0; j < n; ++j) c[j] = beta == T(0) ? T(0) : beta * c[j];
  }
  for (index_t p = 0; p < k; p += kB) {
    const int nb = int(std::min<index_t>(kB, k - p));
    for (index_t i0 = 0; i0 < m; i0 += kA) {
      const int na = int(std::min<index_t>(kA, m - i0));
      T a[kA][kB];  // alpha A's block, zero past its edges
      vt av[kA][kB];
      for (int i = 0; i < kA; ++i)
        for (int r = 0; r < kB; ++r) {
          a[i][r] = i < na && r < nb ? alpha * A(i0 + i, p + r) : T(0);
          av[i][r] = simd::splat(a[i][r]);
        }
      const T* brow[kB];  // rows past B's edge repeat its last (times zero)
      for (int r = 0; r < kB; ++r) brow[r] = B.row(p + std::min(r, nb - 1));
      T* crow[kA] = {};
      for (int i = 0; i < na; ++i) crow[i] = C.row(i0 + i);
      for (index_t j = 0; j < nv; j += L) {
        vt acc[kA] = {};
        for (int r = 0; r < kB; ++r) {
          const vt bv = simd::load(brow[r] + j);
          for (int i = 0; i < kA; ++i) acc[i] += av[i][r] * bv;
        }
        for (int i = 0; i < na; ++i) simd::store(crow[i] + j, simd::load(crow[i] + j) + acc[i]);
      }
      for (index_t j = nv; j < n; ++j)
        for (int i = 0; i < na; ++i) {
          T acc = T(0);
          for (int r = 0; r < nb; ++r) acc += a[i][r] * B(p + r, j);
          C(i0 + i, j) += acc;
        }
    }
  }
}

// One thread's product (the BLAS itself runs single-threaded).
template <class T>
void gemm_serial(bool trans_a, bool trans_b, T alpha, MatrixView<const T> A, MatrixView<const T> B, T beta,
                 MatrixView<T> C) {
  const index_t m = C.rows, n = C.cols, k = trans_a ? A.rows : A.cols;
  if (m == 0 || n == 0) return;
  if (!trans_a && !trans_b && few_rows<T>(m, n, k)) {
    gemm_few_rows(m, n, k, alpha, A, B, beta, C);
    return;
  }
#ifdef FASTMEM_USE_CBLAS
  if (m * n * k > kSmallGemm) {
    const int ta = trans_a ? 112 : 111, tb = trans_b ? 112 : 111;
    if constexpr (sizeof(T) == 4) {
      FASTMEM_CBLAS(cblas_sgemm)(101, ta, tb, int(m), int(n), int(k), alpha, A.ptr, int(A.stride), B.ptr,
                                 int(B.stride), beta, C.ptr, int(C.stride));
    } else {
      FASTMEM_CBLAS(cblas_dgemm)(101, ta, tb, int(m), int(n), int(k), alpha, A.ptr, int(A.stride), B.ptr,
                                 int(B.stride), beta, C.ptr, int(C.stride));
    }
    return;
  }
#endif
  gemm_loops(trans_a, trans_b, m, n, k, alpha, A, B, beta, C);
}

// C = alpha * op(A) op(B) + beta * C, all row-major; op(A) is m x k, op(B) is k x n.
// Large products split the rows of C over the OpenMP threads.
template <class T>
void gemm(bool trans_a, bool trans_b, T alpha, MatrixView<const T> A, MatrixView<const T> B, T beta,
          MatrixView<T> C) {
  const index_t k = trans_a ? A.rows : A.cols;
  const int threads = threads_for(C.rows, C.cols * k);
  parallel_blocks(C.rows, threads, [&](int, index_t r0, index_t r1) {
    // rows r0..r1 of op(A): a row block of A, or a column block of A when transposed
    MatrixView<const T> Ab = trans_a ? MatrixView<const T>(A.ptr + r0, A.rows, r1 - r0, A.stride)
                                     : A.row_block(r0, r1 - r0);
    gemm_serial(trans_a, trans_b, alpha, Ab, B, beta, C.row_block(r0, r1 - r0));
  });
}

}  // namespace blas
}  // namespace fastmem
