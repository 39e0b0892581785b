// Twin of sgd_rank_update.hpp: W += alpha * Eb^T H with 16 x 16 output tiles, the b
// rows streamed through shared memory in a fixed order, so results do not depend on
// scheduling (no atomics). Duplicate tokens are merged by the caller before the
// update (a sort-based segmented reduction), so b is the number of distinct tokens.
#include "check.cuh"
#include <fastmem/cuda/launchers.hpp>

namespace fastmem::cuda {

namespace {
constexpr int kTile = 16;

template <class T>
__global__ void sgd_rank_update_kernel(T* W, const T* Eb, const T* H, T alpha, index_t b, index_t d) {
  __shared__ T es[kTile][kTile + 1];  // es[k][i] = Eb[k0 + k, i0 + i]
  __shared__ T hs[kTile][kTile + 1];  // hs[k][j] = H[k0 + k, j0 + j]
  const index_t i0 = blockIdx.y * index_t(kTile), j0 = blockIdx.x * index_t(kTile);
  const int ty = threadIdx.y, tx = threadIdx.x;
  T acc = T(0);
  for (index_t k0 = 0; k0 < b; k0 += kTile) {
    const index_t k = k0 + ty;
    es[ty][tx] = (k < b && i0 + tx < d) ? Eb[k * d + i0 + tx] : T(0);
    hs[ty][tx] = (k < b && j0 + tx < d) ? H[k * d + j0 + tx] : T(0);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTile; ++kk) acc += es[kk][ty] * hs[kk][tx];
    __syncthreads();
  }
  const index_t i = i0 + ty, j = j0 + tx;
  if (i < d && j < d) W[i * d + j] += alpha * acc;
}
}  // namespace

template <class T>
void sgd_rank_update(T* W, const T* Eb, const T* H, T alpha, index_t b, index_t d, void* stream) {
  if (d == 0) return;
  const dim3 threads(kTile, kTile);
  const auto tiles = static_cast<unsigned>((d + kTile - 1) / kTile);
  sgd_rank_update_kernel<T><<<dim3(tiles, tiles), threads, 0, as_stream(stream)>>>(W, Eb, H, alpha, b, d);
  FASTMEM_CUDA_CHECK(cudaGetLastError());
}

template void sgd_rank_update<float>(float*, const float*, const float*, float, index_t, index_t, void*);
template void sgd_rank_update<double>(double*, const double*, const double*, double, index_t, index_t, void*);

}  // namespace fastmem::cuda
