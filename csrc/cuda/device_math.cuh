// Device helpers shared by the kernels: precision-matched exp/log and warp reductions.
#pragma once
#include <cuda_runtime.h>

namespace fastmem::cuda {

__device__ inline float dexp(float x) { return expf(x); }
__device__ inline double dexp(double x) { return exp(x); }
__device__ inline float dlog(float x) { return logf(x); }
__device__ inline double dlog(double x) { return log(x); }

template <class T>
__device__ inline T neg_inf() {
  return -static_cast<T>(INFINITY);
}

template <class T>
__device__ inline T warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The same butterfly on every call: a deterministic order of additions.
template <class T>
__device__ inline T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace fastmem::cuda
