"""The theory drawn beside the simulation (docs/scansnap.md): Lemma 5's h*(s) recursion for Y
trained alone from zero with the attention fixed, its continuous-time law, and Theorem 4's
snap time."""

import numpy as np

from .. import _validate as v


def _M_eta(M, eta):
    M = v.positive_int("M", M)
    if M < 2:
        v.fail("M", "an integer >= 2", M)
    return M, v.positive_float("eta", eta)


def h_star(steps, M, eta):
    """h*(0 .. steps) (steps + 1,): h*(s) = h*(s-1) + eta / ((M - 1) + e^{M h*(s-1)}), h*(0) = 0.
    With K facts whose bags f_n are orthonormal (no token shared), Y from zero and Z fixed,
    full-batch GD on the mean loss gives Y f_n = h*(s) (M e_n - 1) exactly, with eta = lr_y / K."""
    steps = v.positive_int("steps", steps, allow_zero=True)
    M, eta = _M_eta(M, eta)
    h = np.zeros(steps + 1)
    for s in range(1, steps + 1):
        h[s] = h[s - 1] + eta / ((M - 1) + np.exp(M * h[s - 1]))
    return h


def h_continuous(t, M, eta):
    """The continuous-time law: h(t) solving e^{M h} + (M - 1) M h = M eta t + 1 (t >= 0)."""
    M, eta = _M_eta(M, eta)
    t = v.real_array("t", t)
    if (t < 0).any() or not np.isfinite(t).all():
        v.fail("t", "finite times >= 0", "a negative or non-finite time")
    rhs = M * eta * t + 1.0
    lo = np.zeros_like(rhs)
    hi = np.minimum(np.log(rhs) / M, (rhs - 1.0) / ((M - 1) * M))  # each term alone bounds h
    for _ in range(200):  # bisection: the left side is increasing in h
        mid = 0.5 * (lo + hi)
        big = np.exp(M * mid) + (M - 1) * M * mid > rhs
        hi, lo = np.where(big, mid, hi), np.where(big, lo, mid)
    return 0.5 * (lo + hi)


def snap_time(K, M, lr_y):
    """Theorem 4's snap time t_0 ~ 2 K ln M / lr_y (K next tokens, M tokens)."""
    K = v.positive_int("K", K)
    M, lr_y = _M_eta(M, lr_y)
    return 2.0 * K * np.log(M) / lr_y
