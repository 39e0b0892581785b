// Twin of sample_tokens in rng.hpp: one thread per draw, the same counter-based stream.
#include <fastmem/rng.hpp>

#include "check.cuh"
#include <fastmem/cuda/launchers.hpp>

namespace fastmem::cuda {

namespace {
__global__ void sample_tokens_kernel(const double* cdf, index_t n, CounterRng rng, index_t start_step,
                                     std::int64_t* tokens, index_t total, index_t b) {
  const index_t k = blockIdx.x * index_t(blockDim.x) + threadIdx.x;
  if (k >= total) return;
  const index_t t = k / b, i = k % b;
  const std::uint64_t counter = static_cast<std::uint64_t>(start_step + t) * static_cast<std::uint64_t>(b) + i;
  tokens[k] = sample_index(cdf, n, rng.uniform(counter));
}
}  // namespace

void sample_tokens(const double* cdf, index_t n, std::uint64_t seed, index_t start_step, std::int64_t* tokens,
                   index_t steps, index_t b, void* stream) {
  const index_t total = steps * b;
  if (total == 0) return;
  const int threads = 256;
  const auto blocks = static_cast<unsigned>((total + threads - 1) / threads);
  sample_tokens_kernel<<<blocks, threads, 0, as_stream(stream)>>>(cdf, n, CounterRng(seed), start_step, tokens,
                                                                  total, b);
  FASTMEM_CUDA_CHECK(cudaGetLastError());
}

int device_count(std::string& why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    why = cudaGetErrorString(err);
    return 0;
  }
  if (n == 0) why = "no CUDA device";
  return n;
}

}  // namespace fastmem::cuda
