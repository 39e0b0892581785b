// The CUDA launchers, declared for the bindings: plain C++ (no CUDA header), device
// pointers in, work queued on the caller's stream (a cudaStream_t passed as void*).
// Each launcher is the twin of the C++ kernel of the same name in csrc/include/fastmem.
#pragma once
#include <cstdint>
#include <string>

#include <fastmem/params.hpp>
#include <fastmem/views.hpp>

namespace fastmem::cuda {

// Devices visible to the CUDA runtime; 0 with the runtime's reason in `why`.
int device_count(std::string& why);

// softmax_xent_grad.hpp on the device: q (b x d), u (M x d), y (b), w (b) in; h (b x d),
// lse, zy, zother (b) out. Scores live in shared memory only, one chunk of outputs at a time.
template <class T>
void softmax_xent_grad(const T* q, const T* u, const std::int64_t* y, const T* w, T* h, T* lse, T* zy, T* zother,
                       index_t b, index_t M, index_t d, void* stream);

// W (d x d) += alpha * Eb^T H, Eb and H (b x d): every entry summed over the b rows in order
// (deterministic, no atomics).
template <class T>
void sgd_rank_update(T* W, const T* Eb, const T* H, T alpha, index_t b, index_t d, void* stream);

// rng.hpp's stream: tokens (steps x b) for global steps start_step.., bit-identical to the CPU.
void sample_tokens(const double* cdf, index_t n, std::uint64_t seed, index_t start_step, std::int64_t* tokens,
                   index_t steps, index_t b, void* stream);

// train_many.hpp with one block per run, the run's matrices in shared memory, W trained in
// place. Returns false, launching nothing, when a run does not fit in a block.
template <class T>
bool train_many(const TrainManyParams<T>& P, void* stream);

// The same runs in the dual representation: Z (R x N x M) holds E W U^T on entry and the
// final scores on exit, A (R x N x M) receives sum_t lr P_t, so that the caller rebuilds
// W = W0 - E^T A U; KE (R x N x N) and KU (R x M x M) are the Grams. P.E, P.U, P.W unused.
template <class T>
bool train_many_dual(const TrainManyParams<T>& P, T* Z, T* A, const T* KE, const T* KU, void* stream);

}  // namespace fastmem::cuda
