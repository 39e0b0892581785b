// The one checked-error macro of the CUDA launchers: a failed CUDA call throws a
// fastmem::CudaError with the call, CUDA's message, its status and file:line (the bindings
// raise it as fastmem.CudaError).
#pragma once
#include <cuda_runtime.h>

#include <fastmem/errors.hpp>
#include <string>

#define FASTMEM_CUDA_CHECK(expr)                                                                           \
  do {                                                                                                     \
    const cudaError_t fastmem_err_ = (expr);                                                               \
    if (fastmem_err_ != cudaSuccess)                                                                       \
      throw ::fastmem::CudaError(static_cast<int>(fastmem_err_),                                          \
                                 std::string(#expr) + ": " + cudaGetErrorString(fastmem_err_), __FILE__, \
                                 __LINE__);                                                                \
  } while (0)

namespace fastmem::cuda {

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// Dynamic shared memory a block may opt in to on the current device.
inline std::size_t shared_optin_bytes() {
  int dev = 0, bytes = 0;
  FASTMEM_CUDA_CHECK(cudaGetDevice(&dev));
  FASTMEM_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return static_cast<std::size_t>(bytes);
}

}  // namespace fastmem::cuda
