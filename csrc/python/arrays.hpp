// numpy arrays as the core's views: the shape, dtype and stride checks that keep a call from
// reading out of bounds (the checks with messages for users are made once, in
// fastmem/_validate.py), and the dtype dispatch.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <fastmem/errors.hpp>
#include <fastmem/static_switch.hpp>
#include <fastmem/views.hpp>
#include <initializer_list>
#include <string>
#include <type_traits>

namespace fastmem::binding {

namespace py = pybind11;

// The data of `a`, writeable unless the array is an input (Writable = false: may be read-only).
template <class T, bool Writable>
auto data_of(const py::array& a, const char* name) {
  if constexpr (Writable) {
    FASTMEM_CHECK_ARG(a.writeable(), std::string(name) + " must be writeable");
    return static_cast<T*>(const_cast<py::array&>(a).mutable_data());
  } else {
    return static_cast<const T*>(a.data());
  }
}

// A 2-D array with unit column stride as a view. numpy gives a dimension of
// size 1 any stride, so those strides are not checked.
template <class T, bool Writable = false>
auto matrix_view(const py::array& a, const char* name) {
  FASTMEM_CHECK_ARG(a.ndim() == 2, std::string(name) + " must be 2-D");
  FASTMEM_CHECK_ARG(a.dtype().is(py::dtype::of<T>()), std::string(name) + " has the wrong dtype");
  const index_t rows = a.shape(0), cols = a.shape(1), es = sizeof(T);
  FASTMEM_CHECK_ARG((cols <= 1 || a.strides(1) == es) && (rows <= 1 || a.strides(0) % es == 0),
                    std::string(name) + " must have contiguous rows");
  const index_t stride = rows <= 1 ? cols : a.strides(0) / es;
  using P = std::conditional_t<Writable, T, const T>;
  return MatrixView<P>{data_of<T, Writable>(a, name), rows, cols, stride};
}

template <class T>
MatrixView<T> matrix(const py::array& a, const char* name) {
  return matrix_view<T, true>(a, name);
}

template <class T>
MatrixView<const T> cmatrix(const py::array& a, const char* name) {
  return matrix_view<T, false>(a, name);
}

// A contiguous vector of length n.
template <class T, bool Writable = true>
auto vector_of(const py::array& a, index_t n, const char* name) {
  FASTMEM_CHECK_ARG(a.ndim() == 1 && a.shape(0) == n, std::string(name) + " must have length " + std::to_string(n));
  FASTMEM_CHECK_ARG(a.dtype().is(py::dtype::of<T>()), std::string(name) + " has the wrong dtype");
  FASTMEM_CHECK_ARG(n <= 1 || a.strides(0) == sizeof(T), std::string(name) + " must be contiguous");
  return data_of<T, Writable>(a, name);
}

template <class T>
T* vec(const py::array& a, index_t n, const char* name) {
  return vector_of<T, true>(a, n, name);
}

template <class T>
const T* cvec(const py::array& a, index_t n, const char* name) {
  return vector_of<T, false>(a, n, name);
}

// Optional C-contiguous array (None -> null) with leading dimension n.
template <class T, bool Writable = true>
auto opt_ptr(const py::object& o, index_t n, const char* name) {
  using P = std::conditional_t<Writable, T*, const T*>;
  if (o.is_none()) return P(nullptr);
  py::array a = o.cast<py::array>();
  FASTMEM_CHECK_ARG(a.ndim() >= 1 && a.shape(0) == n && a.dtype().is(py::dtype::of<T>()) &&
                        (a.flags() & py::array::c_style),
                    std::string(name) + " must be C-contiguous with leading dimension " + std::to_string(n));
  return data_of<T, Writable>(a, name);
}

// Optional writeable rows x cols matrix (None -> an empty view).
template <class T>
MatrixView<T> opt_matrix(const py::object& o, index_t rows, index_t cols, const char* name) {
  if (o.is_none()) return {};
  auto v = matrix<T>(o.cast<py::array>(), name);
  FASTMEM_CHECK_ARG(v.rows == rows && v.cols == cols, std::string(name) + " has the wrong shape");
  return v;
}

// A C-contiguous array of exactly the given shape.
template <class T, bool Writable = false>
auto dense(const py::array& a, std::initializer_list<index_t> shape, const char* name) {
  std::string want = "(";
  for (index_t n : shape) want += std::to_string(n) + ",";
  want += ")";
  bool ok = a.ndim() == py::ssize_t(shape.size()) && a.dtype().is(py::dtype::of<T>()) &&
            (a.flags() & py::array::c_style);
  index_t k = 0;
  for (index_t n : shape) ok = ok && a.shape(k++) == n;
  FASTMEM_CHECK_ARG(ok, std::string(name) + " must be a C-contiguous array of shape " + want + " and the right dtype");
  return data_of<T, Writable>(a, name);
}

// The array field `name` of a NamedTuple.
inline py::array field_array(const py::object& t, const char* name) { return t.attr(name).cast<py::array>(); }

// Calls f(T{}) with T the floating type of `a`.
template <class F>
auto dispatch(const py::array& a, F&& f) {
  const bool f32 = a.dtype().is(py::dtype::of<float>());
  if (!f32 && !a.dtype().is(py::dtype::of<double>()))
    throw py::type_error("fastmem kernels take float32 or float64 arrays");
  return dtype_switch(f32 ? Dtype::Float32 : Dtype::Float64, f);
}

// Calls f(T{}) with T the floating type named by numpy's dtype name (the CUDA adapter passes
// device pointers and the arrays' dtype.name).
template <class F>
auto dispatch(const std::string& dtype, F&& f) {
  if (dtype != "float32" && dtype != "float64")
    throw py::type_error("fastmem kernels take float32 or float64 arrays, got " + dtype);
  return dtype_switch(dtype == "float32" ? Dtype::Float32 : Dtype::Float64, f);
}

}  // namespace fastmem::binding
