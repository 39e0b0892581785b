// Twin of train_many.hpp: one block per run, the run's matrices in shared memory, every
// step a handful of small shared-memory products separated by __syncthreads().
//   primal: W (d x d) trained, per step 4 N d (d + M) flops;
//   dual:   the scores Z = E W U^T (N x M) and A (W = W0 - E^T A U) trained with the Grams
//           K_E = E E^T and K_U = U U^T, per step 2 N M (N + M) flops (dual_step.hpp).
// Sums run in a fixed order (thread-private loops, then fixed-shape reductions), so a run's
// result does not depend on the other runs of the launch.
#include "check.cuh"
#include "device_math.cuh"
#include "launchers.hpp"

namespace fastmem::cuda {

namespace {
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Block-wide sum of one value per thread, in a fixed order; every thread gets the result.
__device__ double block_sum(double v, double* red) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  double s = 0.0;
  for (int k = 0; k < kWarps; ++k) s += red[k];
  __syncthreads();
  return s;
}

// C (n x m) = A (n x k) B, B given as (k x m) rows (b_trans false) or (m x k) rows (true).
template <class T, bool BTrans>
__device__ void product(const T* A, const T* B, T* C, index_t n, index_t k, index_t m) {
  for (index_t e = threadIdx.x; e < n * m; e += kThreads) {
    const index_t i = e / m, j = e % m;
    T s = T(0);
    for (index_t l = 0; l < k; ++l) s += A[i * k + l] * (BTrans ? B[j * k + l] : B[l * m + j]);
    C[e] = s;
  }
  __syncthreads();
}

// Population loss and accuracy of the scores Z (N x M); P = p (softmax - onehot) written to
// P (may alias Z).
template <class T>
__device__ void residual(const T* Z, T* P, const double* p, const std::int64_t* y, index_t N, index_t M,
                         double* red, double& loss, double& accuracy) {
  double lsum = 0.0, asum = 0.0;
  for (index_t x = threadIdx.x; x < N; x += kThreads) {
    const T* z = Z + x * M;
    const index_t yx = y[x];
    T mx = neg_inf<T>(), zo = neg_inf<T>();
    for (index_t m = 0; m < M; ++m) {
      mx = fmax(mx, z[m]);
      if (m != yx) zo = fmax(zo, z[m]);
    }
    T s = T(0);
    for (index_t m = 0; m < M; ++m) s += dexp(z[m] - mx);
    const T lse = mx + dlog(s), zy = z[yx];
    lsum += p[x] * (double(lse) - double(zy));
    if (zy - zo > T(0)) asum += p[x];
    const T px = static_cast<T>(p[x]);
    for (index_t m = 0; m < M; ++m) P[x * M + m] = px * (dexp(z[m] - lse) - (m == yx ? T(1) : T(0)));
  }
  loss = block_sum(lsum, red);
  accuracy = block_sum(asum, red);
}

template <class T>
__global__ void __launch_bounds__(kThreads) train_many_primal_kernel(TrainManyParams<T> P) {
  extern __shared__ __align__(16) char smem[];
  const index_t r = blockIdx.x, N = P.N, M = P.M, d = P.d;
  double* red = reinterpret_cast<double*>(smem);
  T* Ws = reinterpret_cast<T*>(red + kWarps);
  T* Es = Ws + d * d;
  T* Us = Es + N * d;
  T* Qs = Us + M * d;  // E W, then P U
  T* Zs = Qs + N * d;  // scores, then P
  for (index_t e = threadIdx.x; e < d * d; e += kThreads) Ws[e] = P.W[r * d * d + e];
  for (index_t e = threadIdx.x; e < N * d; e += kThreads) Es[e] = P.E[r * N * d + e];
  for (index_t e = threadIdx.x; e < M * d; e += kThreads) Us[e] = P.U[r * M * d + e];
  __syncthreads();
  const T lr = static_cast<T>(P.lr[r]);
  double loss = 0.0, accuracy = 0.0;
  std::int8_t status = 0;
  for (index_t t = 0;; ++t) {
    product<T, false>(Es, Ws, Qs, N, d, d);
    product<T, true>(Qs, Us, Zs, N, d, M);
    residual(Zs, Zs, P.p + r * N, P.y + r * N, N, M, red, loss, accuracy);
    if (!isfinite(loss)) {
      status = 1;
      break;
    }
    if (t == P.steps) break;
    product<T, false>(Zs, Us, Qs, N, M, d);
    for (index_t e = threadIdx.x; e < d * d; e += kThreads) {  // W -= lr E^T (P U)
      const index_t i = e / d, k = e % d;
      T g = T(0);
      for (index_t x = 0; x < N; ++x) g += Es[x * d + i] * Qs[x * d + k];
      Ws[e] -= lr * g;
    }
    __syncthreads();
  }
  for (index_t e = threadIdx.x; e < d * d; e += kThreads) P.W[r * d * d + e] = Ws[e];
  if (threadIdx.x == 0) {
    P.loss[r] = static_cast<T>(loss);
    P.accuracy[r] = static_cast<T>(accuracy);
    P.status[r] = status;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) train_many_dual_kernel(TrainManyParams<T> P, T* Z, T* A, const T* KE,
                                                            const T* KU) {
  extern __shared__ __align__(16) char smem[];
  const index_t r = blockIdx.x, N = P.N, M = P.M, NM = N * M;
  double* red = reinterpret_cast<double*>(smem);
  T* Zs = reinterpret_cast<T*>(red + kWarps);
  T* Ps = Zs + NM;
  T* Ts = Ps + NM;  // K_E P
  T* As = Ts + NM;
  T* KEs = As + NM;
  T* KUs = KEs + N * N;
  for (index_t e = threadIdx.x; e < NM; e += kThreads) {
    Zs[e] = Z[r * NM + e];
    As[e] = T(0);
  }
  for (index_t e = threadIdx.x; e < N * N; e += kThreads) KEs[e] = KE[r * N * N + e];
  for (index_t e = threadIdx.x; e < M * M; e += kThreads) KUs[e] = KU[r * M * M + e];
  __syncthreads();
  const T lr = static_cast<T>(P.lr[r]);
  double loss = 0.0, accuracy = 0.0;
  std::int8_t status = 0;
  for (index_t t = 0;; ++t) {
    residual(Zs, Ps, P.p + r * N, P.y + r * N, N, M, red, loss, accuracy);
    if (!isfinite(loss)) {
      status = 1;
      break;
    }
    if (t == P.steps) break;
    product<T, false>(KEs, Ps, Ts, N, N, M);
    for (index_t e = threadIdx.x; e < NM; e += kThreads) {  // Z -= lr K_E P K_U, A += lr P
      const index_t x = e / M, m = e % M;
      T s = T(0);
      for (index_t l = 0; l < M; ++l) s += Ts[x * M + l] * KUs[l * M + m];
      Zs[e] -= lr * s;
      As[e] += lr * Ps[e];
    }
    __syncthreads();
  }
  for (index_t e = threadIdx.x; e < NM; e += kThreads) {
    Z[r * NM + e] = Zs[e];
    A[r * NM + e] = As[e];
  }
  if (threadIdx.x == 0) {
    P.loss[r] = static_cast<T>(loss);
    P.accuracy[r] = static_cast<T>(accuracy);
    P.status[r] = status;
  }
}

template <class K, class... Args>
bool launch(K kernel, std::size_t bytes, index_t runs, void* stream, Args... args) {
  if (bytes > shared_optin_bytes()) return false;
  if (runs == 0) return true;
  FASTMEM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  kernel<<<static_cast<unsigned>(runs), kThreads, bytes, as_stream(stream)>>>(args...);
  FASTMEM_CUDA_CHECK(cudaGetLastError());
  return true;
}
}  // namespace

template <class T>
bool train_many(const TrainManyParams<T>& P, void* stream) {
  const std::size_t bytes = sizeof(double) * kWarps + sizeof(T) * (P.d * P.d + 2 * P.N * P.d + P.M * P.d + P.N * P.M);
  return launch(train_many_primal_kernel<T>, bytes, P.R, stream, P);
}

template <class T>
bool train_many_dual(const TrainManyParams<T>& P, T* Z, T* A, const T* KE, const T* KU, void* stream) {
  const std::size_t bytes = sizeof(double) * kWarps + sizeof(T) * (4 * P.N * P.M + P.N * P.N + P.M * P.M);
  return launch(train_many_dual_kernel<T>, bytes, P.R, stream, P, Z, A, KE, KU);
}

template bool train_many<float>(const TrainManyParams<float>&, void*);
template bool train_many<double>(const TrainManyParams<double>&, void*);
template bool train_many_dual<float>(const TrainManyParams<float>&, float*, float*, const float*, const float*,
                                     void*);
template bool train_many_dual<double>(const TrainManyParams<double>&, double*, double*, const double*,
                                      const double*, void*);

}  // namespace fastmem::cuda
