// Bindings of the associative memory's CUDA launchers (fastmem/cuda/launchers.hpp): device
// pointers arrive as integers from the CuPy adapter (fastmem/memory/_cuda.py), which has
// checked shapes, dtypes and devices; here they are cast, the GIL released, the dtype
// dispatched.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <fastmem/cuda/launchers.hpp>
#include <string>

#include "../arrays.hpp"
#include "../systems.hpp"

namespace py = pybind11;
using namespace fastmem;
using fastmem::binding::dispatch;

namespace {

template <class T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
void* stream(std::uintptr_t s) { return reinterpret_cast<void*>(s); }

void softmax_xent_grad(const std::string& dtype, std::uintptr_t q, std::uintptr_t u, std::uintptr_t y,
                       std::uintptr_t w, std::uintptr_t h, std::uintptr_t lse, std::uintptr_t zy, std::uintptr_t zother,
                       index_t b, index_t M, index_t d, std::uintptr_t s) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release nogil;
    cuda::softmax_xent_grad<T>(ptr<const T>(q), ptr<const T>(u), ptr<const std::int64_t>(y), ptr<const T>(w),
                               ptr<T>(h), ptr<T>(lse), ptr<T>(zy), ptr<T>(zother), b, M, d, stream(s));
  });
}

void sgd_rank_update(const std::string& dtype, std::uintptr_t W, std::uintptr_t Eb, std::uintptr_t H, double alpha,
                     index_t b, index_t d, std::uintptr_t s) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release nogil;
    cuda::sgd_rank_update<T>(ptr<T>(W), ptr<const T>(Eb), ptr<const T>(H), static_cast<T>(alpha), b, d, stream(s));
  });
}

void sample_tokens(std::uintptr_t cdf, index_t n, std::uint64_t seed, index_t start_step, std::uintptr_t out,
                   index_t steps, index_t b, std::uintptr_t s) {
  py::gil_scoped_release nogil;
  cuda::sample_tokens(ptr<const double>(cdf), n, seed, start_step, ptr<std::int64_t>(out), steps, b, stream(s));
}

template <class T>
TrainManyParams<T> many_params(std::uintptr_t E, std::uintptr_t U, std::uintptr_t W, std::uintptr_t p,
                               std::uintptr_t y, std::uintptr_t lr, index_t R, index_t N, index_t M, index_t d,
                               index_t steps, std::uintptr_t loss, std::uintptr_t acc, std::uintptr_t status) {
  TrainManyParams<T> P;
  P.E = ptr<const T>(E), P.U = ptr<const T>(U), P.W = ptr<T>(W);
  P.p = ptr<const double>(p), P.y = ptr<const std::int64_t>(y), P.lr = ptr<const double>(lr);
  P.R = R, P.N = N, P.M = M, P.d = d, P.steps = steps;
  P.loss = ptr<T>(loss), P.accuracy = ptr<T>(acc), P.status = ptr<std::int8_t>(status);
  return P;
}

bool train_many(const std::string& dtype, std::uintptr_t E, std::uintptr_t U, std::uintptr_t W, std::uintptr_t p,
                std::uintptr_t y, std::uintptr_t lr, index_t R, index_t N, index_t M, index_t d, index_t steps,
                std::uintptr_t loss, std::uintptr_t acc, std::uintptr_t status, std::uintptr_t s) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto P = many_params<T>(E, U, W, p, y, lr, R, N, M, d, steps, loss, acc, status);
    py::gil_scoped_release nogil;
    return cuda::train_many<T>(P, stream(s));
  });
}

bool train_many_dual(const std::string& dtype, std::uintptr_t p, std::uintptr_t y, std::uintptr_t lr, index_t R,
                     index_t N, index_t M, index_t steps, std::uintptr_t loss, std::uintptr_t acc,
                     std::uintptr_t status, std::uintptr_t Z, std::uintptr_t A, std::uintptr_t KE, std::uintptr_t KU,
                     std::uintptr_t s) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto P = many_params<T>(0, 0, 0, p, y, lr, R, N, M, 0, steps, loss, acc, status);
    py::gil_scoped_release nogil;
    return cuda::train_many_dual<T>(P, ptr<T>(Z), ptr<T>(A), ptr<const T>(KE), ptr<const T>(KU), stream(s));
  });
}

void bind_memory(py::module_& m) {
  m.def("softmax_xent_grad", &softmax_xent_grad);
  m.def("sgd_rank_update", &sgd_rank_update);
  m.def("sample_tokens", &sample_tokens);
  m.def("train_many", &train_many);
  m.def("train_many_dual", &train_many_dual);
}

}  // namespace

FASTMEM_BIND_SYSTEM(memory, bind_memory);
