// Twin of softmax_xent_grad.hpp. A block owns BQ rows of Q (kept in shared memory with
// their H accumulators) and streams the M output tokens in chunks of kChunk:
//   pass 1: scores of a chunk (a shared-memory tile product), online max / log-sum-exp,
//           target score and best other score per row;
//   pass 2: the same scores again, P = w (softmax - onehot) in place, H += P U_chunk.
// Scores exist only as one BQ x kChunk tile in shared memory, never in global memory,
// so memory is O(b d) whatever M; accumulation is in T (fp32 for float inputs).
#include <algorithm>

#include "check.cuh"
#include "device_math.cuh"
#include <fastmem/cuda/launchers.hpp>

namespace fastmem::cuda {

namespace {
constexpr int kThreads = 256;
constexpr int kChunk = 64;   // output tokens per chunk (BM)
constexpr int kDepth = 32;   // k-tile of the score product
constexpr int kWarps = kThreads / 32;

template <class T, int BQ>
struct Tile {
  T* qs;      // BQ x d rows of Q
  T* hs;      // BQ x d accumulators of H
  T* us;      // kChunk x (kDepth + 1) slice of U
  T* zs;      // BQ x kChunk scores / probabilities
  T* mx;      // BQ running max
  T* sm;      // BQ running sum of exp(z - mx)
  T* zy;      // BQ target score
  T* zo;      // BQ best other score
  std::int64_t* ys;  // BQ targets

  static std::size_t bytes(index_t d) {
    return sizeof(T) * (2 * BQ * d + kChunk * (kDepth + 1) + BQ * kChunk + 4 * BQ) + sizeof(std::int64_t) * BQ;
  }
  __device__ Tile(char* smem, index_t d) {
    qs = reinterpret_cast<T*>(smem);
    hs = qs + BQ * d;
    us = hs + BQ * d;
    zs = us + kChunk * (kDepth + 1);
    mx = zs + BQ * kChunk;
    sm = mx + BQ;
    zy = sm + BQ;
    zo = zy + BQ;
    ys = reinterpret_cast<std::int64_t*>(zo + BQ);
  }
};

// zs = Q_tile U[m0 : m0 + cn]^T, -inf outside the rn x cn valid block.
template <class T, int BQ>
__device__ void score_tile(const Tile<T, BQ>& t, const T* u, index_t m0, index_t cn, index_t rn, index_t d) {
  constexpr int kGroups = kThreads / kChunk;               // row groups of threads
  constexpr int kRows = BQ >= kGroups ? BQ / kGroups : 1;  // rows per thread
  const int tid = threadIdx.x, j = tid % kChunk, g = tid / kChunk;
  T acc[kRows];
#pragma unroll
  for (int s = 0; s < kRows; ++s) acc[s] = T(0);
  for (index_t k0 = 0; k0 < d; k0 += kDepth) {
    for (int e = tid; e < kChunk * kDepth; e += kThreads) {
      const int jj = e / kDepth, kk = e % kDepth;
      t.us[jj * (kDepth + 1) + kk] = (jj < cn && k0 + kk < d) ? u[(m0 + jj) * d + k0 + kk] : T(0);
    }
    __syncthreads();
    const int kn = static_cast<int>(d - k0 < kDepth ? d - k0 : kDepth);
    if (g < BQ) {
      for (int kk = 0; kk < kn; ++kk) {
        const T uv = t.us[j * (kDepth + 1) + kk];
#pragma unroll
        for (int s = 0; s < kRows; ++s) acc[s] += t.qs[(g + kGroups * s) * d + k0 + kk] * uv;
      }
    }
    __syncthreads();
  }
  if (g < BQ) {
#pragma unroll
    for (int s = 0; s < kRows; ++s) {
      const int r = g + kGroups * s;
      t.zs[r * kChunk + j] = (j < cn && r < rn) ? acc[s] : neg_inf<T>();
    }
  }
  __syncthreads();
}

template <class T, int BQ>
__global__ void __launch_bounds__(kThreads)
softmax_xent_grad_kernel(const T* q, const T* u, const std::int64_t* y, const T* w, T* h, T* lse, T* zy, T* zother,
                         index_t b, index_t M, index_t d) {
  extern __shared__ __align__(16) char smem[];
  const Tile<T, BQ> t(smem, d);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const index_t r0 = blockIdx.x * index_t(BQ);
  const index_t rn = b - r0 < BQ ? b - r0 : BQ;
  for (index_t e = tid; e < BQ * d; e += kThreads) {
    const index_t r = e / d;
    t.qs[e] = r < rn ? q[(r0 + r) * d + e % d] : T(0);
    t.hs[e] = T(0);
  }
  if (tid < BQ) {
    t.mx[tid] = neg_inf<T>();
    t.sm[tid] = T(0);
    t.zy[tid] = neg_inf<T>();
    t.zo[tid] = neg_inf<T>();
    t.ys[tid] = tid < rn ? y[r0 + tid] : -1;
  }
  __syncthreads();

  // pass 1: the log-sum-exp, target and best other score of every row
  for (index_t m0 = 0; m0 < M; m0 += kChunk) {
    const index_t cn = M - m0 < kChunk ? M - m0 : kChunk;
    score_tile(t, u, m0, cn, rn, d);
    for (int r = warp; r < rn; r += kWarps) {
      T omax = neg_inf<T>(), target = neg_inf<T>(), cmax = neg_inf<T>();
      for (int j = lane; j < cn; j += 32) {
        const T z = t.zs[r * kChunk + j];
        if (m0 + j == t.ys[r]) target = z; else omax = fmax(omax, z);
        cmax = fmax(cmax, z);
      }
      omax = warp_max(omax);
      target = warp_max(target);
      cmax = warp_max(cmax);
      const T m_new = fmax(t.mx[r], cmax);
      T s = T(0);
      for (int j = lane; j < cn; j += 32) s += dexp(t.zs[r * kChunk + j] - m_new);
      s = warp_sum(s);
      if (lane == 0) {
        t.sm[r] = (t.mx[r] == neg_inf<T>() ? T(0) : t.sm[r] * dexp(t.mx[r] - m_new)) + s;
        t.mx[r] = m_new;
        t.zo[r] = fmax(t.zo[r], omax);
        if (t.ys[r] >= m0 && t.ys[r] < m0 + cn) t.zy[r] = target;
      }
    }
    __syncthreads();
  }
  if (tid < rn) t.mx[tid] += dlog(t.sm[tid]);  // mx now holds the log-sum-exp
  __syncthreads();

  // pass 2: H = w (softmax - onehot) U, one chunk of P at a time
  for (index_t m0 = 0; m0 < M; m0 += kChunk) {
    const index_t cn = M - m0 < kChunk ? M - m0 : kChunk;
    score_tile(t, u, m0, cn, rn, d);
    for (int e = tid; e < BQ * kChunk; e += kThreads) {
      const int r = e / kChunk, j = e % kChunk;
      t.zs[e] = (r < rn && j < cn)
                    ? w[r0 + r] * (dexp(t.zs[e] - t.mx[r]) - (m0 + j == t.ys[r] ? T(1) : T(0)))
                    : T(0);
    }
    __syncthreads();
    for (index_t k = tid; k < d; k += kThreads) {
      T acc[BQ];
#pragma unroll
      for (int r = 0; r < BQ; ++r) acc[r] = T(0);
      for (int j = 0; j < cn; ++j) {
        const T uv = u[(m0 + j) * d + k];
#pragma unroll
        for (int r = 0; r < BQ; ++r) acc[r] += t.zs[r * kChunk + j] * uv;
      }
#pragma unroll
      for (int r = 0; r < BQ; ++r) t.hs[r * d + k] += acc[r];
    }
    __syncthreads();
  }

  for (index_t e = tid; e < rn * d; e += kThreads) h[r0 * d + e] = t.hs[e];
  if (tid < rn) {
    lse[r0 + tid] = t.mx[tid];
    zy[r0 + tid] = t.zy[tid];
    zother[r0 + tid] = t.zo[tid];
  }
}

template <class T, int BQ>
bool launch(const T* q, const T* u, const std::int64_t* y, const T* w, T* h, T* lse, T* zy, T* zother, index_t b,
            index_t M, index_t d, void* stream) {
  const std::size_t bytes = Tile<T, BQ>::bytes(d);
  if (bytes > shared_optin_bytes()) return false;
  auto kernel = softmax_xent_grad_kernel<T, BQ>;
  FASTMEM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  const auto blocks = static_cast<unsigned>((b + BQ - 1) / BQ);
  kernel<<<blocks, kThreads, bytes, as_stream(stream)>>>(q, u, y, w, h, lse, zy, zother, b, M, d);
  FASTMEM_CUDA_CHECK(cudaGetLastError());
  return true;
}
}  // namespace

template <class T>
void softmax_xent_grad(const T* q, const T* u, const std::int64_t* y, const T* w, T* h, T* lse, T* zy, T* zother,
                       index_t b, index_t M, index_t d, void* stream) {
  if (b == 0) return;
  // Many rows per block share each U chunk; few rows keep every SM busy.
  if (b >= 16 * 64 && launch<T, 16>(q, u, y, w, h, lse, zy, zother, b, M, d, stream)) return;
  if (b >= 4 && launch<T, 4>(q, u, y, w, h, lse, zy, zother, b, M, d, stream)) return;
  if (launch<T, 1>(q, u, y, w, h, lse, zy, zother, b, M, d, stream)) return;
  throw std::invalid_argument("softmax_xent_grad: d = " + std::to_string(d) +
                              " needs more shared memory per block than this device has");
}

template void softmax_xent_grad<float>(const float*, const float*, const std::int64_t*, const float*, float*,
                                       float*, float*, float*, index_t, index_t, index_t, void*);
template void softmax_xent_grad<double>(const double*, const double*, const std::int64_t*, const double*,
                                        double*, double*, double*, double*, index_t, index_t, index_t, void*);

}  // namespace fastmem::cuda
