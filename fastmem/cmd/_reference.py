"""CMD's float64 numpy reference (kernels/cmd.hpp)."""

import numpy as np

from ..backends import numpy_ref as ref


def cmd_assign_fit(theta, refs, mode, a, b, corr):
    X = theta.astype(ref.F)
    Xc, Rc = X - X.mean(axis=0), refs - refs.mean(axis=0)
    den = np.sqrt(np.outer((Xc * Xc).sum(axis=0), (Rc * Rc).sum(axis=0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(den > 0, np.abs(Xc.T @ Rc) / den, 0.0)  # (P, M); a constant series correlates 0
    mode[...] = c.argmax(axis=1)
    r = refs[:, mode]
    rc = r - r.mean(axis=0)
    var = (rc * rc).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a[...] = np.where(var > 0, (Xc * rc).sum(axis=0) / var, 0.0)
    b[...] = X.mean(axis=0) - a * r.mean(axis=0)
    if corr is not None:
        corr[...] = c[np.arange(len(mode)), mode]


def cmd_online_update(theta_t, r_t, mode, n, r_mean, r_m2, theta_mean, co):
    dr = r_t - r_mean
    r_mean += dr / (n + 1)
    r_m2 += dr * (r_t - r_mean)
    theta_mean += (theta_t - theta_mean) / (n + 1)
    co += dr[mode] * (theta_t - theta_mean)
