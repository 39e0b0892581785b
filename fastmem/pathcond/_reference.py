"""PathCond's float64 numpy reference: the coordinate solver as docs/pathcond.md states it."""

import numpy as np


def pathcond_solve(weights, groups, z, objective, tol, max_sweeps, enorm):
    """PathCond's coordinate solver as docs/pathcond.md states it, one neuron at a time on explicit
    index sets of its incoming and outgoing parameters (ENorm: balance their theta^2)."""
    live = weights > 0  # the entries on a path; the others are not in the kernel
    P = weights.size if enorm else int(live.sum())
    sets, A = [], []
    for Hn, ino, row, bo, oo, outer, inner in groups:
        for h in range(Hn):
            in_idx = np.arange(ino + h * row, ino + (h + 1) * row)
            if bo >= 0:
                in_idx = np.append(in_idx, bo + h)
            out_idx = (oo + (np.arange(outer)[:, None] * Hn + h) * inner + np.arange(inner)).ravel()
            sets.append((in_idx, out_idx))
            A.append(int(live[in_idx].sum() - live[out_idx].sum()))
    sign = 1.0 if enorm else -1.0  # the factor of incoming entries of the working vector, as e^{sign z}
    w = weights.astype(np.float64).copy()
    for (in_idx, out_idx), zh in zip(sets, z):
        w[in_idx] *= np.exp(sign * zh)
        w[out_idx] *= np.exp(-sign * zh)
    log0 = np.log(weights[live]).sum() if objective is not None else 0.0

    def F():
        return P * np.log(w.sum() / P) - (log0 - np.dot(A, z))

    if objective is not None:
        objective[0] = F()
    sweep = 0
    while sweep < max_sweeps:
        S, moved = w.sum(), 0.0
        for n, (in_idx, out_idx) in enumerate(sets):
            s_in, s_out = w[in_idx].sum(), w[out_idx].sum()
            D = S - s_in - s_out
            if not enorm and s_in == 0 and s_out == 0:
                continue  # a neuron on no path keeps its z
            if enorm:
                with np.errstate(divide="ignore", invalid="ignore"):  # a neuron without weights: inf, refused
                    y = np.sqrt(s_out / s_in)
                S = D + s_in * y + s_out / y
            else:
                a, b, c = s_out * (A[n] + P), D * A[n], s_in * (A[n] - P)
                # the positive root (a = 0: a neuron whose outgoing entries are on no path)
                y = -c / b if a == 0 else (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)
                S = D + s_out * y + s_in / y
            z[n] += np.log(y)
            moved += abs(np.log(y))
            w[in_idx] *= y if enorm else 1 / y
            w[out_idx] *= 1 / y if enorm else y
        sweep += 1
        if objective is not None:
            objective[sweep] = F()
        if moved < tol:
            break
    return sweep
