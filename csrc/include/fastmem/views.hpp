// Non-owning views over caller memory. The core never allocates the arrays it
// is handed; a view is a pointer plus sizes and a row stride (in elements).
#pragma once
#include <cstdint>

namespace fastmem {

using index_t = std::int64_t;

// Functions shared by host code and CUDA kernels (rng.hpp): nvcc compiles them for
// both; a plain C++ compiler sees ordinary inline functions.
#if defined(__CUDACC__)
#define FASTMEM_HD __host__ __device__
#else
#define FASTMEM_HD
#endif

// Row-major matrix with unit column stride and an arbitrary row stride.
template <class T>
struct MatrixView {
  T* ptr = nullptr;
  index_t rows = 0;
  index_t cols = 0;
  index_t stride = 0;

  MatrixView() = default;
  MatrixView(T* p, index_t r, index_t c, index_t s) : ptr(p), rows(r), cols(c), stride(s) {}
  MatrixView(T* p, index_t r, index_t c) : ptr(p), rows(r), cols(c), stride(c) {}
  // Implicit T -> const T, as a pointer would.
  template <class S>
  MatrixView(const MatrixView<S>& o) : ptr(o.ptr), rows(o.rows), cols(o.cols), stride(o.stride) {}

  T* row(index_t i) const { return ptr + i * stride; }
  T& operator()(index_t i, index_t j) const { return ptr[i * stride + j]; }
  MatrixView row_block(index_t r0, index_t n) const { return {ptr + r0 * stride, n, cols, stride}; }
  bool empty() const { return ptr == nullptr; }
};

}  // namespace fastmem
