"""The learning task: a token distribution p over [N] and a target map y: [N] -> [M]."""

import numpy as np

from .. import _validate as v


class Task:
    """Input distribution and targets.

    Parameters
    ----------
    p : array (N,)
        Token probabilities, non-negative, summing to 1 (float64 internally).
    y : int array (N,)
        Target of each token, in ``[0, M)``.
    M : int, optional
        Number of output tokens (default ``max(y) + 1``, at least 2).
    """

    __slots__ = ("p", "y", "M", "cdf")

    def __init__(self, p, y, M=None):
        p = v.real_array("p", p)
        if p.ndim != 1 or p.size == 0:
            v.fail("p", "a non-empty 1-D array", f"shape {p.shape}")
        if not np.isfinite(p).all():
            v.fail("p", "finite probabilities", "NaN or Inf")
        if (p < 0).any():
            v.fail("p", "non-negative probabilities", f"min {p.min():g}")
        if abs(p.sum() - 1.0) > 1e-6:
            v.fail("p", "probabilities summing to 1", f"sum {p.sum():.9g}")
        y = np.asarray(y)
        if y.shape != p.shape:
            v.fail("y", f"shape {p.shape} (the shape of p)", f"shape {y.shape}")
        if y.dtype.kind not in "iu":
            v.fail("y", "an integer array", f"dtype {y.dtype}")
        if y.min() < 0:
            v.fail("y", "targets >= 0", f"min {y.min()}")
        M = int(y.max()) + 1 if M is None else v.positive_int("M", M)
        if M < 2:
            v.fail("M", "at least 2 output tokens", M)
        y = v.tokens("y", y, M)
        p = p / p.sum()
        cdf = np.cumsum(p)
        cdf /= cdf[-1]
        cdf[-1] = 1.0  # sampling relies on u < cdf[-1] for every u in [0, 1)
        for a in (p, y, cdf):
            a.flags.writeable = False
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "M", M)
        object.__setattr__(self, "cdf", cdf)

    def __setattr__(self, name, value):
        raise AttributeError("Task is immutable")

    @property
    def N(self):
        """Number of input tokens."""
        return self.p.shape[0]

    @classmethod
    def zipf(cls, N, M, alpha=1.0):
        """p(x) ∝ (x + 1)^-alpha and y(x) = x mod M."""
        N = v.positive_int("N", N)
        alpha = v.positive_float("alpha", alpha, allow_zero=True)
        p = (np.arange(N, dtype=np.float64) + 1.0) ** -alpha
        return cls(p / p.sum(), np.arange(N) % v.positive_int("M", M), M=M)

    @classmethod
    def uniform(cls, N, M):
        """p(x) = 1/N and y(x) = x mod M."""
        N = v.positive_int("N", N)
        return cls(np.full(N, 1.0 / N), np.arange(N) % v.positive_int("M", M), M=M)

    def __repr__(self):
        return f"Task(N={self.N}, M={self.M})"
