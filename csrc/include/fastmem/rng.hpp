// Counter-based token sampler. Draw i of step t depends only on (seed, t*b + i),
// so a run can resume at any step bit-exactly and the numpy reference
// (fastmem/backends/numpy_ref.py) reproduces the same tokens.
#pragma once
#include <cstdint>

#include "views.hpp"

namespace fastmem {

FASTMEM_HD inline std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

struct CounterRng {
  std::uint64_t key;
  FASTMEM_HD explicit CounterRng(std::uint64_t seed) : key(splitmix64(seed)) {}
  FASTMEM_HD std::uint64_t bits(std::uint64_t counter) const { return splitmix64(key ^ splitmix64(counter)); }
  // 53 random bits -> [0, 1)
  FASTMEM_HD double uniform(std::uint64_t counter) const {
    return static_cast<double>(bits(counter) >> 11) * 0x1.0p-53;
  }
};

// Inverse-CDF draw: the first index whose cumulative probability exceeds u.
// cdf[n-1] is 1 exactly (the caller normalises), so u < 1 always lands inside.
// A plain binary search (std::upper_bound's) so that CUDA threads run the same code.
FASTMEM_HD inline index_t sample_index(const double* cdf, index_t n, double u) {
  index_t lo = 0, hi = n;
  while (lo < hi) {
    const index_t mid = lo + (hi - lo) / 2;
    if (u < cdf[mid]) hi = mid; else lo = mid + 1;
  }
  return lo < n ? lo : n - 1;
}

// tokens (steps x b): draws for global steps start_step .. start_step + steps - 1.
inline void sample_tokens(const double* cdf, index_t n, std::uint64_t seed, index_t start_step,
                          MatrixView<std::int64_t> tokens) {
  CounterRng rng(seed);
  const index_t b = tokens.cols;
  for (index_t t = 0; t < tokens.rows; ++t) {
    const std::uint64_t base = static_cast<std::uint64_t>(start_step + t) * static_cast<std::uint64_t>(b);
    for (index_t i = 0; i < b; ++i) tokens(t, i) = sample_index(cdf, n, rng.uniform(base + i));
  }
}

}  // namespace fastmem
