// Twin of train_many.hpp: one block per run, the run's matrices in shared memory, every
// step a handful of small shared-memory products separated by __syncthreads().
//   primal: W (d x d) trained, per step 4 N d (d + M) flops;
//   dual:   the scores Z = E W U^T (N x M) and A (W = W0 - E^T A U) trained with the Grams
//           K_E = E E^T and K_U = U U^T, per step 2 N M (N + M) flops (dual_step.hpp).
// Sums run in a fixed order (thread-private loops, then fixed-shape reductions), so a run's
// result does not depend on the other runs of the launch.
#include "check.cuh"
#include "device_math.cuh"
#include <fastmem/cuda/launchers.hpp>

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

// Shared-memory matrices are stored with an odd row stride (cols + 1 when cols is even), so
// that threads walking down a column hit distinct banks.
__host__ __device__ inline index_t padded(index_t cols) { return cols % 2 == 0 ? cols + 1 : cols; }

// A matrix in shared memory: rows x cols with row stride ld.
template <class T>
struct Smem {
  T* p;
  index_t ld;
  __device__ T& operator()(index_t i, index_t j) const { return p[i * ld + j]; }
};

// C (n x m) = A (n x k) B, B read as (k x m) or, with BTrans, as the transpose of (m x k).
template <class T, bool BTrans>
__device__ void product(Smem<T> A, Smem<T> B, Smem<T> C, index_t n, index_t k, index_t m) {
  for (index_t e = threadIdx.x; e < n * m; e += kThreads) {
    const index_t i = e / m, j = e % m;
    T s = T(0);
    for (index_t l = 0; l < k; ++l) s += A(i, l) * (BTrans ? B(j, l) : B(l, j));
    C(i, j) = s;
  }
  __syncthreads();
}

// Population loss and accuracy of the scores Z (N x M); P = p (softmax - onehot) written to
// P (may alias Z).
template <class T>
__device__ void residual(Smem<T> Z, Smem<T> P, const double* p, const std::int64_t* y, index_t N, index_t M,
                         double* red, double& loss, double& accuracy) {
  double lsum = 0.0, asum = 0.0;
  for (index_t x = threadIdx.x; x < N; x += kThreads) {
    const index_t yx = y[x];
    T mx = neg_inf<T>(), zo = neg_inf<T>();
    for (index_t m = 0; m < M; ++m) {
      mx = fmax(mx, Z(x, m));
      if (m != yx) zo = fmax(zo, Z(x, m));
    }
    T s = T(0);
    for (index_t m = 0; m < M; ++m) s += dexp(Z(x, m) - mx);
    const T lse = mx + dlog(s), zy = Z(x, yx);
    lsum += p[x] * (double(lse) - double(zy));
    if (zy - zo > T(0)) asum += p[x];
    const T px = static_cast<T>(p[x]);
    for (index_t m = 0; m < M; ++m) P(x, m) = px * (dexp(Z(x, m) - lse) - (m == yx ? T(1) : T(0)));
  }
  loss = block_sum(lsum, red);
  accuracy = block_sum(asum, red);
}

// Carves consecutive padded matrices out of dynamic shared memory (after the reduction slots).
template <class T>
struct Carver {
  T* next;
  __device__ Smem<T> take(index_t rows, index_t cols) {
    Smem<T> m{next, padded(cols)};
    next += rows * m.ld;
    return m;
  }
};

template <class T>
__device__ void load(Smem<T> dst, const T* src, index_t rows, index_t cols) {
  for (index_t e = threadIdx.x; e < rows * cols; e += kThreads) dst(e / cols, e % cols) = src[e];
}

template <class T>
__device__ void store(T* dst, Smem<T> src, index_t rows, index_t cols) {
  for (index_t e = threadIdx.x; e < rows * cols; e += kThreads) dst[e] = src(e / cols, e % cols);
}

// The loop of both block kernels, drive() on the device: the population loss at step t
// (loss_at(), which also leaves what update() needs), a stop where it is not finite (status 1,
// the state kept from before) or at the last step, else update() and the block's barrier.
template <class LossAt, class Update>
__device__ std::int8_t block_drive(index_t steps, LossAt&& loss_at, Update&& update) {
  for (index_t t = 0;; ++t) {
    if (!isfinite(loss_at())) return 1;
    if (t == steps) return 0;
    update();
    __syncthreads();
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) train_many_primal_kernel(TrainManyParams<T> P) {
  extern __shared__ __align__(16) char smem[];
  const index_t r = blockIdx.x, N = P.N, M = P.M, d = P.d;
  double* red = reinterpret_cast<double*>(smem);
  Carver<T> carve{reinterpret_cast<T*>(red + kWarps)};
  const Smem<T> Ws = carve.take(d, d), Es = carve.take(N, d), Us = carve.take(M, d);
  const Smem<T> Qs = carve.take(N, d);  // E W, then P U
  const Smem<T> Zs = carve.take(N, M);  // scores, then P
  load(Ws, P.W + r * d * d, d, d);
  load(Es, P.E + r * N * d, N, d);
  load(Us, P.U + r * M * d, M, d);
  __syncthreads();
  const T lr = static_cast<T>(P.lr[r]);
  double loss = 0.0, accuracy = 0.0;
  const std::int8_t status = block_drive(
      P.steps,
      [&] {
        product<T, false>(Es, Ws, Qs, N, d, d);
        product<T, true>(Qs, Us, Zs, N, d, M);
        residual(Zs, Zs, P.p + r * N, P.y + r * N, N, M, red, loss, accuracy);
        return loss;
      },
      [&] {
        product<T, false>(Zs, Us, Qs, N, M, d);
        for (index_t e = threadIdx.x; e < d * d; e += kThreads) {  // W -= lr E^T (P U)
          const index_t i = e / d, k = e % d;
          T g = T(0);
          for (index_t x = 0; x < N; ++x) g += Es(x, i) * Qs(x, k);
          Ws(i, k) -= lr * g;
        }
      });
  store(P.W + r * d * d, Ws, d, d);
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
  Carver<T> carve{reinterpret_cast<T*>(red + kWarps)};
  const Smem<T> Zs = carve.take(N, M), Ps = carve.take(N, M), As = carve.take(N, M);
  const Smem<T> Ts = carve.take(N, M);  // K_E P
  const Smem<T> KEs = carve.take(N, N), KUs = carve.take(M, M);
  load(Zs, Z + r * NM, N, M);
  load(KEs, KE + r * N * N, N, N);
  load(KUs, KU + r * M * M, M, M);
  for (index_t e = threadIdx.x; e < NM; e += kThreads) As(e / M, e % M) = T(0);
  __syncthreads();
  const T lr = static_cast<T>(P.lr[r]);
  double loss = 0.0, accuracy = 0.0;
  const std::int8_t status = block_drive(
      P.steps,
      [&] {
        residual(Zs, Ps, P.p + r * N, P.y + r * N, N, M, red, loss, accuracy);
        return loss;
      },
      [&] {
        product<T, false>(KEs, Ps, Ts, N, N, M);
        for (index_t e = threadIdx.x; e < NM; e += kThreads) {  // Z -= lr K_E P K_U, A += lr P
          const index_t x = e / M, m = e % M;
          T s = T(0);
          for (index_t l = 0; l < M; ++l) s += Ts(x, l) * KUs(l, m);
          Zs(x, m) -= lr * s;
          As(x, m) += lr * Ps(x, m);
        }
      });
  store(Z + r * NM, Zs, N, M);
  store(A + r * NM, As, N, M);
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
  const index_t ld = padded(P.d);
  const std::size_t bytes =
      sizeof(double) * kWarps + sizeof(T) * ((P.d + 2 * P.N + P.M) * ld + P.N * padded(P.M));
  return launch(train_many_primal_kernel<T>, bytes, P.R, stream, P);
}

template <class T>
bool train_many_dual(const TrainManyParams<T>& P, T* Z, T* A, const T* KE, const T* KU, void* stream) {
  const std::size_t bytes =
      sizeof(double) * kWarps + sizeof(T) * ((4 * P.N + P.M) * padded(P.M) + P.N * padded(P.N));
  return launch(train_many_dual_kernel<T>, bytes, P.R, stream, P, Z, A, KE, KU);
}

template bool train_many<float>(const TrainManyParams<float>&, void*);
template bool train_many<double>(const TrainManyParams<double>&, void*);
template bool train_many_dual<float>(const TrainManyParams<float>&, float*, float*, const float*, const float*,
                                     void*);
template bool train_many_dual<double>(const TrainManyParams<double>&, double*, double*, const double*,
                                      const double*, void*);

}  // namespace fastmem::cuda
