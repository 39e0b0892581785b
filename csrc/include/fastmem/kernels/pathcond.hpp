// PathCond's exact coordinate solver (Lebeurrier, Vayer, Gribonval, ICML 2026; docs/pathcond.md)
// and the ENorm baseline, on the flat vector of a ReLU network's parameters.
//
// Hidden neuron (or channel) h rescales its incoming parameters by lambda_h = e^{z_h / 2} and its
// outgoing ones by 1 / lambda_h: the function is unchanged, diag G becomes G' = G e^{Bz} (B: -1
// on incoming, +1 on outgoing), and PathCond minimises
//   F(z) = P log(sum_i G'_i / P) - sum_i log G'_i,
// one neuron at a time, exactly: with y = e^{dz_h}, sum_i G'_i = D + S_out y + S_in / y, and the
// minimiser is the positive root of S_out (A + P) y^2 + D A y + S_in (A - P) = 0, A = n_in - n_out.
//
// The neurons of one layer have disjoint incoming and outgoing sets, so their sums S_in, S_out
// are taken for the whole layer in one streaming pass, the layer's neurons solved in order
// (only the total D + S_in + S_out changes between them, exactly as one neuron at a time), and
// the scaling applied in a second pass: O(P) a sweep with no per-neuron gather.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../errors.hpp"
#include "../parallel.hpp"
#include "../views.hpp"

namespace fastmem {

// One layer of rescalable neurons, as blocks of the flat parameter vector: neuron h's incoming
// parameters are row h of the (H x in_row) block at in_offset and, where bias_offset >= 0,
// entry bias_offset + h; its outgoing ones are the slice [:, h, :] of the
// (out_outer x H x out_inner) block at out_offset (a dense next layer: out_inner = 1; a
// convolution: out_inner = its kernel size; a flatten then dense layer: the spatial size).
struct RescaleGroup {
  std::int64_t H = 0, in_offset = 0, in_row = 0, bias_offset = -1, out_offset = 0, out_outer = 0, out_inner = 0;
};

struct PathCondParams {
  const double* weights = nullptr;  // (P,) diag G (PathCond) or theta^2 (ENorm), all > 0
  index_t P = 0;
  const RescaleGroup* groups = nullptr;
  index_t n_groups = 0;
  double* z = nullptr;          // (sum of H,) the start on entry, the solution on return
  double* objective = nullptr;  // (max_sweeps + 1,) F before the first sweep and after each; may be
                                // null (and means nothing for ENorm)
  double tol = 1e-2;            // stop once a sweep moves sum |dz_h| less than this
  index_t max_sweeps = 10;
  bool enorm = false;           // ENorm: balance sum_in theta'^2 = sum_out theta'^2 per neuron
};

namespace detail {

// The positive root of a y^2 + b y + c (a > 0 > c), without cancellation.
inline double positive_root(double a, double b, double c) {
  const double s = std::sqrt(b * b - 4.0 * a * c);
  return b >= 0.0 ? (2.0 * c) / (-b - s) : (-b + s) / (2.0 * a);
}

// Threads for a pass over a group's blocks: memory-bound streaming, worth a second thread
// from a few hundred thousand entries on.
inline int pass_threads(const RescaleGroup& g) { return threads_for(g.H, 8 * (g.in_row + g.out_outer * g.out_inner)); }

// S_in and S_out of every neuron of group g (one pass over its two blocks; a dense next
// layer, out_inner = 1, reads its rows whole).
inline void group_sums(const RescaleGroup& g, const double* w, double* s_in, double* s_out) {
  const index_t H = g.H, R = g.in_row, O = g.out_outer, B = g.out_inner;
  parallel_blocks(H, pass_threads(g), [&](int, index_t h0, index_t h1) {
    for (index_t h = h0; h < h1; ++h) {
      const double* row = w + g.in_offset + h * R;
      double s = g.bias_offset >= 0 ? w[g.bias_offset + h] : 0.0;
#pragma omp simd reduction(+ : s)
      for (index_t r = 0; r < R; ++r) s += row[r];
      s_in[h] = s;
      s_out[h] = 0.0;
    }
    for (index_t o = 0; o < O; ++o) {
      const double* blk = w + g.out_offset + o * H * B;
      if (B == 1) {
#pragma omp simd
        for (index_t h = h0; h < h1; ++h) s_out[h] += blk[h];
        continue;
      }
      for (index_t h = h0; h < h1; ++h) {
        double s = 0.0;
        for (index_t b = 0; b < B; ++b) s += blk[h * B + b];
        s_out[h] += s;
      }
    }
  });
}

// Incoming parameters times f_in[h], outgoing ones times f_out[h].
inline void group_scale(const RescaleGroup& g, double* w, const double* f_in, const double* f_out) {
  const index_t H = g.H, R = g.in_row, O = g.out_outer, B = g.out_inner;
  parallel_blocks(H, pass_threads(g), [&](int, index_t h0, index_t h1) {
    for (index_t h = h0; h < h1; ++h) {
      double* row = w + g.in_offset + h * R;
      const double f = f_in[h];
#pragma omp simd
      for (index_t r = 0; r < R; ++r) row[r] *= f;
      if (g.bias_offset >= 0) w[g.bias_offset + h] *= f;
    }
    for (index_t o = 0; o < O; ++o) {
      double* blk = w + g.out_offset + o * H * B;
      if (B == 1) {
#pragma omp simd
        for (index_t h = h0; h < h1; ++h) blk[h] *= f_out[h];
        continue;
      }
      for (index_t h = h0; h < h1; ++h)
        for (index_t b = 0; b < B; ++b) blk[h * B + b] *= f_out[h];
    }
  });
}

// sum_i log w_i of positive normal doubles without a log per entry: the exponents are summed
// as integers and the mantissas (in [1, 2)) multiplied, renormalised every 16 (exact to a few
// ulps of the result; a subnormal or non-positive entry takes std::log).
inline double sum_log(const double* w, index_t n) {
  double total = 0.0;
#pragma omp parallel for reduction(+ : total) num_threads(max_threads()) if (n > 65536)
  for (index_t c = 0; c < n; c += 1024) {
    const index_t end = std::min(n, c + 1024);
    std::int64_t e = 0;
    double m = 1.0, extra = 0.0;
    for (index_t i = c; i < end; ++i) {
      std::uint64_t bits;
      std::memcpy(&bits, &w[i], sizeof bits);
      const std::int64_t biased = std::int64_t((bits >> 52) & 0x7ff);
      if (biased == 0 || biased == 0x7ff || (bits >> 63)) {  // subnormal, zero, inf, NaN or negative
        extra += std::log(w[i]);
        continue;
      }
      e += biased - 1023;
      bits = (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;  // the mantissa, in [1, 2)
      double f;
      std::memcpy(&f, &bits, sizeof f);
      m *= f;
      if (((i - c) & 15) == 15) {
        int k;
        m = std::frexp(m, &k);
        e += k;
      }
    }
    total += std::log(m) + double(e) * 0.69314718055994530942 + extra;
  }
  return total;
}

inline double sum(const double* w, index_t n) {
  double s = 0.0;
#pragma omp parallel for reduction(+ : s) num_threads(max_threads()) if (n > 65536)
  for (index_t i = 0; i < n; ++i) s += w[i];
  return s;
}

}  // namespace detail

// Checks the groups against P (cheap, for C++ embedders; the Python layer builds them).
inline void check_rescale_groups(const RescaleGroup* groups, index_t n, index_t P) {
  for (index_t k = 0; k < n; ++k) {
    const RescaleGroup& g = groups[k];
    FASTMEM_CHECK_ARG(g.H >= 1 && g.in_row >= 0 && g.out_outer >= 1 && g.out_inner >= 1, "groups: empty block");
    FASTMEM_CHECK_ARG(g.in_offset >= 0 && g.in_offset + g.H * g.in_row <= P, "groups: incoming block past P");
    FASTMEM_CHECK_ARG(g.bias_offset < 0 || g.bias_offset + g.H <= P, "groups: bias past P");
    FASTMEM_CHECK_ARG(g.out_offset >= 0 && g.out_offset + g.out_outer * g.H * g.out_inner <= P,
                      "groups: outgoing block past P");
  }
}

// Runs the solver from p.z; returns the sweeps done. `work` (P) is scratch: the current
// G e^{Bz} (or theta^2 e^{-Bz} for ENorm).
inline index_t pathcond_solve(const PathCondParams& p, std::vector<double>& work) {
  check_rescale_groups(p.groups, p.n_groups, p.P);
  const index_t P = p.P;
  work.assign(p.weights, p.weights + P);
  const double log_sum0 = p.objective ? detail::sum_log(p.weights, P) : 0.0;  // sum_i log G_i
  // PathCond: incoming G' scale by 1 / y, outgoing by y; ENorm's theta'^2 the other way round
  const double in_sign = p.enorm ? 1.0 : -1.0;
  index_t zs = 0, hmax = 0;
  for (index_t k = 0; k < p.n_groups; ++k) hmax = std::max<index_t>(hmax, p.groups[k].H);
  const std::size_t hn = std::size_t(hmax);
  std::vector<double> s_in(hn), s_out(hn), f_in(hn), f_out(hn);
  // the starting z (none to apply from zeros)
  bool zero = true;
  for (index_t k = 0, off = 0; k < p.n_groups; off += p.groups[k].H, ++k)
    for (index_t h = 0; h < p.groups[k].H; ++h) zero = zero && p.z[off + h] == 0.0;
  for (index_t k = 0; k < p.n_groups && !zero; ++k) {
    const RescaleGroup& g = p.groups[k];
    for (index_t h = 0; h < g.H; ++h) {
      f_in[h] = std::exp(in_sign * p.z[zs + h]);
      f_out[h] = 1.0 / f_in[h];
    }
    detail::group_scale(g, work.data(), f_in.data(), f_out.data());
    zs += g.H;
  }
  auto objective = [&](double S) {  // F = P log(S / P) - sum log G', sum log G' = sum log G - sum_h A_h z_h
    double az = 0.0;
    index_t off = 0;
    for (index_t k = 0; k < p.n_groups; ++k) {
      const RescaleGroup& g = p.groups[k];
      const double A = double(g.in_row + (g.bias_offset >= 0)) - double(g.out_outer * g.out_inner);
      for (index_t h = 0; h < g.H; ++h) az += A * p.z[off + h];
      off += g.H;
    }
    return double(P) * std::log(S / double(P)) - (log_sum0 - az);
  };
  double total = detail::sum(work.data(), P);  // sum of G', exact at the start of each sweep
  if (p.objective) p.objective[0] = objective(total);
  index_t sweep = 0;
  while (sweep < p.max_sweeps) {
    double S = total, moved = 0.0;
    index_t off = 0;
    for (index_t k = 0; k < p.n_groups; ++k) {
      const RescaleGroup& g = p.groups[k];
      detail::group_sums(g, work.data(), s_in.data(), s_out.data());
      const double n_in = double(g.in_row + (g.bias_offset >= 0)), n_out = double(g.out_outer * g.out_inner);
      const double A = n_in - n_out;
      for (index_t h = 0; h < g.H; ++h) {
        const double D = S - s_in[h] - s_out[h];
        double y;
        if (p.enorm) {
          y = std::sqrt(s_out[h] / s_in[h]);  // s_in y = s_out / y
          S = D + s_in[h] * y + s_out[h] / y;
        } else {
          y = detail::positive_root(s_out[h] * (A + double(P)), D * A, s_in[h] * (A - double(P)));
          S = D + s_out[h] * y + s_in[h] / y;
        }
        const double dz = std::log(y);
        p.z[off + h] += dz;
        moved += std::fabs(dz);
        f_in[h] = p.enorm ? y : 1.0 / y;
        f_out[h] = 1.0 / f_in[h];
      }
      detail::group_scale(g, work.data(), f_in.data(), f_out.data());
      off += g.H;
    }
    ++sweep;
    total = detail::sum(work.data(), P);
    if (p.objective) p.objective[sweep] = objective(total);
    if (moved < p.tol) break;
  }
  return sweep;
}

}  // namespace fastmem
