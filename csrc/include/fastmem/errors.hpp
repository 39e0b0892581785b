// Typed errors that carry the source location (file:line), so that the Python bindings
// map them to fastmem's exceptions with a useful message: FASTMEM_CHECK_ARG for a bad
// argument (fastmem.InvalidArgumentError, a ValueError), CudaError for a failed CUDA call.
#pragma once
#include <stdexcept>
#include <string>

namespace fastmem {

class InvalidArgument : public std::invalid_argument {
 public:
  InvalidArgument(const std::string& what, const char* file, int line)
      : std::invalid_argument(what + " [" + file + ":" + std::to_string(line) + "]") {}
};

// A failed CUDA call (FASTMEM_CUDA_CHECK, csrc/cuda/check.cuh): its cudaError_t as an int, so
// that this header includes nothing of CUDA; the bindings raise it as fastmem.CudaError.
class CudaError : public std::runtime_error {
 public:
  CudaError(int status, const std::string& what, const char* file, int line)
      : std::runtime_error(what + " [" + file + ":" + std::to_string(line) + "]"), status_(status) {}
  int status() const noexcept { return status_; }

 private:
  int status_;
};

}  // namespace fastmem

#define FASTMEM_CHECK_ARG(cond, msg)                                   \
  do {                                                                 \
    if (!(cond)) throw ::fastmem::InvalidArgument((msg), __FILE__, __LINE__); \
  } while (0)
