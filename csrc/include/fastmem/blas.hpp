// Dense products. Large GEMMs go to a CBLAS when the embedder provides one
// (define FASTMEM_USE_CBLAS, and FASTMEM_CBLAS_PREFIX for a prefixed build such
// as scipy-openblas's "scipy_"); small ones, and every product when no BLAS is
// configured, use the plain loops below, which are exact but untuned.
#pragma once
#include <cstdint>

#include "parallel.hpp"
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

// One thread's product (the BLAS itself runs single-threaded).
template <class T>
void gemm_serial(bool trans_a, bool trans_b, T alpha, MatrixView<const T> A, MatrixView<const T> B, T beta,
                 MatrixView<T> C) {
  const index_t m = C.rows, n = C.cols, k = trans_a ? A.rows : A.cols;
  if (m == 0 || n == 0) return;
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
