"""CMD's kernels (kernels/cmd.hpp) on the numba backend: P-wide passes, parallel over parameters."""

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def _cmd_assign_fit(theta, refs, mode, a, b, corr):
    T, P = theta.shape
    M = refs.shape[1]
    rmean = np.zeros(M)
    for m in range(M):
        rmean[m] = refs[:, m].mean()
    rc = refs - rmean
    rn2 = (rc * rc).sum(axis=0)
    for i in prange(P):
        mean = 0.0
        for t in range(T):
            mean += theta[t, i]
        mean /= T
        ss = 0.0
        dot = np.zeros(M)
        for t in range(T):
            xv = theta[t, i] - mean
            ss += xv * xv
            for m in range(M):
                dot[m] += xv * rc[t, m]
        best, best_c = 0, -1.0
        for m in range(M):
            den = math.sqrt(ss * rn2[m])
            cc = abs(dot[m]) / den if den > 0 else 0.0
            if cc > best_c:
                best_c, best = cc, m
        mode[i] = best
        a[i] = dot[best] / rn2[best] if rn2[best] > 0 else 0.0
        b[i] = mean - a[i] * rmean[best]
        corr[i] = best_c


def cmd_assign_fit(theta, refs, mode, a, b, corr):
    _cmd_assign_fit(theta, refs, mode, a, b, corr if corr is not None else np.empty(len(mode)))


@njit(cache=True, parallel=True)
def _cmd_online_update(theta_t, r_t, mode, n, r_mean, r_m2, theta_mean, co):
    dr = r_t - r_mean
    r_mean += dr / (n + 1)
    r_m2 += dr * (r_t - r_mean)
    inv = 1.0 / (n + 1)
    for i in prange(len(theta_t)):
        theta_mean[i] += (theta_t[i] - theta_mean[i]) * inv
        co[i] += dr[mode[i]] * (theta_t[i] - theta_mean[i])


def cmd_online_update(theta_t, r_t, mode, n, r_mean, r_m2, theta_mean, co):
    _cmd_online_update(theta_t, r_t, mode, n, r_mean, r_m2, theta_mean, co)
