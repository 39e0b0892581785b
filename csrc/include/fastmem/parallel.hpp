// Parallelism of the core: OpenMP threads over row blocks, each calling a
// single-threaded BLAS. One level only, so that BLAS threads and OpenMP threads
// never compete for cores (embedders: link a sequential BLAS, or set its
// thread count to 1, as the Python module does).
//
// The thread count is fastmem's own (set_num_threads, FASTMEM_NUM_THREADS), passed to
// every parallel region: OpenMP's process-wide setting belongs to whichever library in the
// process changed it last (PyTorch's set_num_threads changes it), and following it would
// let another library halve fastmem's speed.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "views.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastmem {

// Below this many multiply-adds a second thread costs more than it saves.
constexpr index_t kParallelWork = index_t(1) << 18;

// FASTMEM_NUM_THREADS, else OMP_NUM_THREADS as the environment gave it at start, else
// the processors this process may run on.
inline int default_threads() {
  for (const char* name : {"FASTMEM_NUM_THREADS", "OMP_NUM_THREADS"}) {
    const char* s = std::getenv(name);
    const int n = s ? std::atoi(s) : 0;
    if (n >= 1) return n;
  }
#ifdef _OPENMP
  return std::max(1, omp_get_num_procs());
#else
  return 1;
#endif
}

inline std::atomic<int>& thread_setting() {
  static std::atomic<int> n{default_threads()};
  return n;
}

// The threads fastmem's parallel regions use (n >= 1; 1 without OpenMP).
inline void set_num_threads(int n) { thread_setting().store(std::max(1, n)); }

inline int num_threads() {
#ifdef _OPENMP
  return thread_setting().load();
#else
  return 1;
#endif
}

// Threads for a region started here: none nested inside another region.
inline int max_threads() {
#ifdef _OPENMP
  return omp_in_parallel() ? 1 : num_threads();
#else
  return 1;
#endif
}

// This thread's index in the enclosing parallel region (0 outside one, or without OpenMP).
inline int thread_num() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Threads worth using for n items of `work_per_item` multiply-adds each.
inline int threads_for(index_t n, index_t work_per_item) {
  const index_t by_work = std::max<index_t>(1, n * work_per_item / kParallelWork);
  return static_cast<int>(std::min<index_t>({index_t(max_threads()), n, by_work}));
}

// f(thread, begin, end) on `threads` contiguous blocks of [0, n).
template <class F>
void parallel_blocks(index_t n, int threads, F&& f) {
  if (threads <= 1) {
    f(0, index_t(0), n);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    f(t, n * t / nt, n * (t + 1) / nt);
  }
#else
  f(0, index_t(0), n);
#endif
}

}  // namespace fastmem
