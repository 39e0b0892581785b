// PathCond's exact coordinate solver (Lebeurrier, Vayer, Gribonval, ICML 2026; docs/pathcond.md)
// and the ENorm baseline, on the flat vector of a ReLU network's parameters.
//
// Hidden neuron (or channel) h rescales its incoming parameters by lambda_h = e^{z_h / 2} and its
// outgoing ones by 1 / lambda_h: the function is unchanged, diag G becomes G' = G e^{Bz} (B: -1
// on incoming, +1 on outgoing), and PathCond minimises
//   F(z) = P log(sum_i G'_i / P) - sum_i log G'_i,
// one neuron at a time, exactly: with y = e^{dz_h}, sum_i G'_i = D + S_out y + S_in / y, and the
// minimiser is the positive root of S_out (A + P) y^2 + D A y + S_in (A - P) = 0, A = n_in - n_out.
// An entry with G_i = 0 lies on no path (a 3 x 3 kernel's border over a 1 x 1 map): it is not in
// the kernel, so P, A and the sums count the positive entries only, and a neuron with none in
// its sets keeps z_h.
//
// The neurons of one layer have disjoint incoming and outgoing sets, so their sums S_in, S_out
// are taken for the whole layer at once and its neurons solved in order (only the total
// D + S_in + S_out changes between them, exactly as one neuron at a time). G' is never
// written: see pathcond_solve below.
//
// The groups form chains (an MLP: one; a residual network: one per block, the channels a skip
// connection ties being in no group): where group k's outgoing block is group k + 1's incoming
// one they share it; elsewhere the blocks of different groups are disjoint.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "../interrupt.hpp"
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
  const double* weights = nullptr;  // (P,) diag G (PathCond) or theta^2 (ENorm), >= 0
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

// sum_i log w_i over the non-zero w_i without a log per entry: the exponents of normal doubles
// are summed as integers and the mantissas (in [1, 2)) multiplied, renormalised every 16 (exact
// to a few ulps of the result; a subnormal or negative entry takes std::log).
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
      if (w[i] == 0.0) continue;  // on no path: not in the kernel
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

// A_h = n_in - n_out of each neuron of a group, counting the positive entries:
// d(-sum log G')/d(log y) for it.
inline void balances(const double* G, const RescaleGroup& g, double* A) {
  for (index_t h = 0; h < g.H; ++h) {
    index_t count = g.bias_offset >= 0 && G[g.bias_offset + h] > 0.0;
    for (index_t r = 0; r < g.in_row; ++r) count += G[g.in_offset + h * g.in_row + r] > 0.0;
    A[h] = double(count);
  }
  for (index_t o = 0; o < g.out_outer; ++o)
    for (index_t h = 0; h < g.H; ++h) {
      const double* blk = G + g.out_offset + (o * g.H + h) * g.out_inner;
      index_t count = 0;
      for (index_t b = 0; b < g.out_inner; ++b) count += blk[b] > 0.0;
      A[h] -= double(count);
    }
}

inline index_t count_positive(const double* w, index_t n) {
  index_t count = 0;
#pragma omp parallel for reduction(+ : count) num_threads(max_threads()) if (n > 65536)
  for (index_t i = 0; i < n; ++i) count += w[i] > 0.0;
  return count;
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

// The solver never rescales the vector itself. Every entry of G' is its G times one factor per
// role: e^{-z_h} for a neuron it enters (e^{+z_h} for ENorm), e^{+z_h} for a neuron it leaves.
// Within a chain each group's incoming block is the previous group's outgoing one, so every sum
// the solver needs is a contraction of one block with a factor vector: with Gr_k (O_k x H_k),
// group k's outgoing block summed over its inner axis (the block itself for a dense next layer),
//   S_out,k[c] = f_out,k[c] sum_o Gr_k[o, c] f_in,k+1[o],   S_in,k+1[o] = f_in,k+1[o] sum_c Gr_k[o, c] f_out,k[c].
// A chain's first incoming rows and its last outgoing columns see one factor only: their sums
// are taken once. A sweep reads each Gr_k twice and writes nothing.
struct PathCondWorkspace {
  std::vector<std::vector<double>> Gr;     // per group: its outgoing block summed over the inner axis (B > 1)
  std::vector<std::vector<double>> first_rows, last_cols;  // per chain head / chain end
  std::vector<double> s_in, s_out, f_in, f_out, dot, A;  // A: per neuron, n_in - n_out (positive entries)
  bool interrupted = false;  // the last solve stopped from outside
};

namespace detail {

// out[o] = sum_c A[o, c] x[c] (A: rows x cols, row-major)
inline void matvec(const double* A, index_t rows, index_t cols, const double* x, double* out) {
  parallel_blocks(rows, threads_for(rows, cols / 4), [&](int, index_t r0, index_t r1) {  // 2 threads from 1 M entries
    for (index_t o = r0; o < r1; ++o) {
      const double* a = A + o * cols;
      double s = 0.0;
#pragma omp simd reduction(+ : s)
      for (index_t c = 0; c < cols; ++c) s += a[c] * x[c];
      out[o] = s;
    }
  });
}

// out[c] = sum_o A[o, c] y[o]
inline void matvec_t(const double* A, index_t rows, index_t cols, const double* y, double* out) {
  const int nt = threads_for(cols, rows / 4);
  parallel_blocks(cols, nt, [&](int, index_t c0, index_t c1) {
    for (index_t c = c0; c < c1; ++c) out[c] = 0.0;
    for (index_t o = 0; o < rows; ++o) {
      const double* a = A + o * cols;
      const double w = y[o];
#pragma omp simd
      for (index_t c = c0; c < c1; ++c) out[c] += a[c] * w;
    }
  });
}

}  // namespace detail

// Whether group k's outgoing block is group k + 1's incoming one (the two are in one chain).
inline bool chained(const RescaleGroup* groups, index_t n, index_t k) {
  return k + 1 < n && groups[k].out_offset == groups[k + 1].in_offset;
}

// Checks that the groups form chains: a shared block has one shape on both sides, and every
// other pair of blocks (incoming rows, biases, outgoing blocks) is disjoint.
inline void check_rescale_chains(const RescaleGroup* groups, index_t n) {
  std::vector<std::pair<index_t, index_t>> blocks;
  for (index_t k = 0; k < n; ++k) {
    const RescaleGroup& g = groups[k];
    if (chained(groups, n, k))
      FASTMEM_CHECK_ARG(g.out_outer == groups[k + 1].H && g.H * g.out_inner == groups[k + 1].in_row,
                        "groups: a shared block of one shape (group k's outgoing block, group k + 1's incoming one)");
    if (k == 0 || !chained(groups, n, k - 1)) blocks.emplace_back(g.in_offset, g.in_offset + g.H * g.in_row);
    if (g.bias_offset >= 0) blocks.emplace_back(g.bias_offset, g.bias_offset + g.H);
    blocks.emplace_back(g.out_offset, g.out_offset + g.out_outer * g.H * g.out_inner);
  }
  std::sort(blocks.begin(), blocks.end());
  for (std::size_t i = 1; i < blocks.size(); ++i)
    FASTMEM_CHECK_ARG(blocks[i - 1].second <= blocks[i].first,
                      "groups: chains (blocks shared only by consecutive groups, all others disjoint)");
}

// Runs the solver from p.z; returns the sweeps done. A stop asked from outside (interrupt.hpp:
// Ctrl-C) ends it between two groups with ws.interrupted set (z then half a sweep: not a result).
inline index_t pathcond_solve(const PathCondParams& p, PathCondWorkspace& ws) {
  StopPoller poller;
  ws.interrupted = false;
  check_rescale_groups(p.groups, p.n_groups, p.P);
  check_rescale_chains(p.groups, p.n_groups);
  const index_t P = p.P, n = p.n_groups;
  const double* G = p.weights;
  const double log_sum0 = p.objective ? detail::sum_log(G, P) : 0.0;  // sum_i log G_i over G_i > 0
  const double P_live = p.enorm ? double(P) : double(detail::count_positive(G, P));
  // the reduced outgoing blocks; the first rows' and last columns' sums
  ws.Gr.resize(std::size_t(n));
  std::vector<index_t> zoff(std::size_t(n) + 1, 0);
  index_t hmax = 0;
  for (index_t k = 0; k < n; ++k) {
    const RescaleGroup& g = p.groups[k];
    zoff[k + 1] = zoff[k] + g.H;
    hmax = std::max<index_t>(hmax, std::max<index_t>(g.H, g.out_outer));
    if (g.out_inner > 1) {
      std::vector<double>& r = ws.Gr[k];
      r.assign(std::size_t(g.out_outer * g.H), 0.0);
      const double* blk = G + g.out_offset;
      for (index_t i = 0; i < g.out_outer * g.H; ++i) {
        double s = 0.0;
        for (index_t b = 0; b < g.out_inner; ++b) s += blk[i * g.out_inner + b];
        r[std::size_t(i)] = s;
      }
    }
  }
  auto Gr = [&](index_t k) { return p.groups[k].out_inner > 1 ? ws.Gr[k].data() : G + p.groups[k].out_offset; };
  auto head = [&](index_t k) { return k == 0 || !chained(p.groups, n, k - 1); };
  auto end = [&](index_t k) { return !chained(p.groups, n, k); };
  ws.first_rows.assign(std::size_t(n), {});
  ws.last_cols.assign(std::size_t(n), {});
  for (index_t k = 0; k < n; ++k) {
    const RescaleGroup& g = p.groups[k];
    if (head(k)) {
      std::vector<double>& rows = ws.first_rows[k];
      rows.assign(std::size_t(g.H), 0.0);
      for (index_t h = 0; h < g.H; ++h) {
        double s = 0.0;
        for (index_t r = 0; r < g.in_row; ++r) s += G[g.in_offset + h * g.in_row + r];
        rows[h] = s;
      }
    }
    if (end(k)) {
      ws.last_cols[k].assign(std::size_t(g.H), 0.0);
      detail::matvec_t(Gr(k), g.out_outer, g.H, std::vector<double>(std::size_t(g.out_outer), 1.0).data(),
                       ws.last_cols[k].data());
    }
  }
  // the sum of the entries in no group's sets (the output layer's biases, the layers whose
  // channels a skip ties), constant: the gaps between the blocks the groups cover
  std::vector<std::pair<index_t, index_t>> covered;
  for (index_t k = 0; k < n; ++k) {
    const RescaleGroup& g = p.groups[k];
    covered.emplace_back(g.in_offset, g.in_offset + g.H * g.in_row);
    if (g.bias_offset >= 0) covered.emplace_back(g.bias_offset, g.bias_offset + g.H);
    covered.emplace_back(g.out_offset, g.out_offset + g.out_outer * g.H * g.out_inner);
  }
  std::sort(covered.begin(), covered.end());
  double rest = 0.0;
  index_t at = 0;
  for (const auto& [b, e] : covered) {
    for (index_t i = at; i < b; ++i) rest += G[i];
    at = std::max(at, e);
  }
  for (index_t i = at; i < P; ++i) rest += G[i];
  // f_in[k][h]: the factor of an entry entering neuron h of group k; f_out = 1 / f_in
  const double in_sign = p.enorm ? 1.0 : -1.0;
  ws.f_in.resize(std::size_t(zoff[n]));
  ws.f_out.resize(std::size_t(zoff[n]));
  for (index_t i = 0; i < zoff[n]; ++i) {
    ws.f_in[i] = std::exp(in_sign * p.z[i]);
    ws.f_out[i] = 1.0 / ws.f_in[i];
  }
  ws.A.assign(std::size_t(zoff[n]), 0.0);  // ENorm does not use it
  if (!p.enorm)
    for (index_t k = 0; k < n; ++k) detail::balances(G, p.groups[k], ws.A.data() + zoff[k]);
  ws.s_in.resize(std::size_t(hmax));
  ws.s_out.resize(std::size_t(hmax));
  ws.dot.resize(std::size_t(hmax));
  // S_in of group k (its rows, times their factors, plus biases) and S_out (its columns)
  auto sums = [&](index_t k) {
    const RescaleGroup& g = p.groups[k];
    const double* fi = ws.f_in.data() + zoff[k];
    const double* fo = ws.f_out.data() + zoff[k];
    if (head(k)) {
      for (index_t h = 0; h < g.H; ++h) ws.dot[h] = ws.first_rows[k][h];
    } else {
      detail::matvec(Gr(k - 1), g.H, p.groups[k - 1].H, ws.f_out.data() + zoff[k - 1], ws.dot.data());
    }
    for (index_t h = 0; h < g.H; ++h)
      ws.s_in[h] = fi[h] * (ws.dot[h] + (g.bias_offset >= 0 ? G[g.bias_offset + h] : 0.0));
    if (end(k)) {
      for (index_t h = 0; h < g.H; ++h) ws.dot[h] = ws.last_cols[k][h];
    } else {
      detail::matvec_t(Gr(k), g.out_outer, g.H, ws.f_in.data() + zoff[k + 1], ws.dot.data());
    }
    for (index_t h = 0; h < g.H; ++h) ws.s_out[h] = fo[h] * ws.dot[h];
  };
  // the total of G' (the objective's first term): every group's S_in, each chain's last S_out, the rest;
  // taken once, then updated exactly by each coordinate step
  auto total = [&] {
    double S = rest;
    for (index_t k = 0; k < n; ++k) {
      sums(k);
      for (index_t h = 0; h < p.groups[k].H; ++h) S += ws.s_in[h] + (end(k) ? ws.s_out[h] : 0.0);
    }
    return S;
  };
  auto objective = [&](double S) {  // F = P log(S / P) - sum log G', sum log G' = sum log G - sum_h A_h z_h
    double az = 0.0;
    for (index_t i = 0; i < zoff[n]; ++i) az += ws.A[i] * p.z[i];
    return P_live * std::log(S / P_live) - (log_sum0 - az);
  };
  double S = total();
  if (p.objective) p.objective[0] = objective(S);
  index_t sweep = 0;
  while (sweep < p.max_sweeps) {
    double moved = 0.0;
    for (index_t k = 0; k < n; ++k) {
      if (poller.stop()) {
        ws.interrupted = true;
        return sweep;
      }
      const RescaleGroup& g = p.groups[k];
      sums(k);
      for (index_t h = 0; h < g.H; ++h) {
        const double s_in = ws.s_in[h], s_out = ws.s_out[h], D = S - s_in - s_out, A = ws.A[zoff[k] + h];
        double y;
        if (!p.enorm && s_in == 0.0 && s_out == 0.0) continue;  // on no path: nothing to balance
        if (p.enorm) {
          y = std::sqrt(s_out / s_in);  // s_in y = s_out / y
          S = D + s_in * y + s_out / y;
        } else {
          y = detail::positive_root(s_out * (A + P_live), D * A, s_in * (A - P_live));
          S = D + s_out * y + s_in / y;
        }
        const double dz = std::log(y);
        p.z[zoff[k] + h] += dz;
        moved += std::fabs(dz);
        ws.f_in[zoff[k] + h] *= p.enorm ? y : 1.0 / y;
        ws.f_out[zoff[k] + h] = 1.0 / ws.f_in[zoff[k] + h];
      }
    }
    ++sweep;
    if (p.objective) p.objective[sweep] = objective(S);
    if (moved < p.tol) break;
  }
  return sweep;
}

}  // namespace fastmem
