"""PathCond's solver (kernels/pathcond.hpp) on the numba backend."""

import numpy as np
from numba import njit

from ..backends.numba_cpu import interruptible


@njit(cache=True, error_model="numpy")  # 1/0 is inf (a neuron without weights, refused after)
def _pathcond_sweep_group(w, g, z, A, off, s_in, s_out, f_in, f_out, S, P, enorm):
    H, ino, row, bo, oo, outer, inner = g[0], g[1], g[2], g[3], g[4], g[5], g[6]
    for h in range(H):
        s = w[bo + h] if bo >= 0 else 0.0
        for r in range(row):
            s += w[ino + h * row + r]
        s_in[h] = s
        s_out[h] = 0.0
    for o in range(outer):
        for h in range(H):
            base = oo + (o * H + h) * inner
            s = 0.0
            for b in range(inner):
                s += w[base + b]
            s_out[h] += s
    moved = 0.0
    for h in range(H):
        D, Ah = S - s_in[h] - s_out[h], A[off + h]
        f_in[h] = f_out[h] = 1.0
        if not enorm and s_in[h] == 0.0 and s_out[h] == 0.0:
            continue  # on no path: nothing to balance
        if enorm:
            y = np.sqrt(s_out[h] / s_in[h])
            S = D + s_in[h] * y + s_out[h] / y
        else:
            a, bq, c = s_out[h] * (Ah + P), D * Ah, s_in[h] * (Ah - P)
            sq = np.sqrt(bq * bq - 4.0 * a * c)
            y = (2.0 * c) / (-bq - sq) if bq >= 0.0 else (-bq + sq) / (2.0 * a)
            S = D + s_out[h] * y + s_in[h] / y
        dz = np.log(y)
        z[off + h] += dz
        moved += abs(dz)
        f_in[h] = y if enorm else 1.0 / y
        f_out[h] = 1.0 / f_in[h]
    _pathcond_scale_group(w, g, f_in, f_out)
    return S, moved


@njit(cache=True, error_model="numpy")
def _pathcond_scale_group(w, g, f_in, f_out):
    H, ino, row, bo, oo, outer, inner = g[0], g[1], g[2], g[3], g[4], g[5], g[6]
    for h in range(H):
        for r in range(row):
            w[ino + h * row + r] *= f_in[h]
        if bo >= 0:
            w[bo + h] *= f_in[h]
    for o in range(outer):
        for h in range(H):
            base = oo + (o * H + h) * inner
            for b in range(inner):
                w[base + b] *= f_out[h]


@njit(cache=True, error_model="numpy")
def _balances(w, groups, A):
    """A_h = n_in - n_out of every neuron, counting the positive entries (kernels/pathcond.hpp)."""
    off = 0
    for k in range(groups.shape[0]):
        H, ino, row, bo, oo, outer, inner = (groups[k, 0], groups[k, 1], groups[k, 2], groups[k, 3], groups[k, 4],
                                             groups[k, 5], groups[k, 6])
        for h in range(H):
            n = 1 if bo >= 0 and w[bo + h] > 0.0 else 0
            for r in range(row):
                n += w[ino + h * row + r] > 0.0
            for o in range(outer):
                for b in range(inner):
                    n -= w[oo + (o * H + h) * inner + b] > 0.0
            A[off + h] = n
        off += H


@njit(cache=True, error_model="numpy")
def _pathcond_objective(w, A, z, log0, P):
    return P * np.log(w.sum() / P) - (log0 - np.dot(A, z))


@njit(cache=True, error_model="numpy", nogil=True)  # nogil: run by interruptible() beside the main thread
def _pathcond_solve(weights, groups, z, objective, has_objective, tol, max_sweeps, enorm, stop):
    live = weights > 0.0  # the entries on a path (the others are not in the kernel)
    P = weights.size if enorm else live.sum()
    w = weights.copy()
    log0 = np.log(weights[live]).sum() if has_objective else 0.0
    A = np.zeros(z.size)  # ENorm does not use it
    if not enorm:
        _balances(weights, groups, A)
    hmax = groups[:, 0].max()
    s_in, s_out, f_in, f_out = np.empty(hmax), np.empty(hmax), np.empty(hmax), np.empty(hmax)
    sign = 1.0 if enorm else -1.0
    off = 0
    for k in range(groups.shape[0]):
        for h in range(groups[k, 0]):
            f_in[h] = np.exp(sign * z[off + h])
            f_out[h] = 1.0 / f_in[h]
        _pathcond_scale_group(w, groups[k], f_in, f_out)
        off += groups[k, 0]
    if has_objective:
        objective[0] = _pathcond_objective(w, A, z, log0, P)
    sweep = 0
    while sweep < max_sweeps:
        S, moved, off = w.sum(), 0.0, 0
        for k in range(groups.shape[0]):
            if stop[0] != 0:  # Ctrl-C: z is half a sweep, raised by interruptible as it is
                return sweep
            S, m = _pathcond_sweep_group(w, groups[k], z, A, off, s_in, s_out, f_in, f_out, S, P, enorm)
            moved += m
            off += groups[k, 0]
        sweep += 1
        if has_objective:
            objective[sweep] = _pathcond_objective(w, A, z, log0, P)
        if moved < tol:
            break
    return sweep


def pathcond_solve(weights, groups, z, objective, tol, max_sweeps, enorm):
    has = objective is not None
    return int(interruptible(_pathcond_solve, weights, groups, z, objective if has else np.empty(1), has, tol,
                             max_sweeps, enorm, progress=lambda sweeps: (sweeps, 0)))
