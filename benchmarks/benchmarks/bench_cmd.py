"""CMD on long trajectories: the post-hoc fit and the online update, up to P = 10^7 parameters."""

import numpy as np

import fastmem as fm

from .common import BACKENDS, require


def _modes(T, M, seed=0):
    r = np.cumsum(np.random.default_rng(seed).standard_normal((T, M)), axis=0)
    return r / r.std(axis=0)


def _trajectory(P, T, M):
    """float32 (T, P): each parameter an affine function of one of M random walks, plus noise."""
    rng = np.random.default_rng(1)
    r = _modes(T, M).astype(np.float32)
    k = rng.integers(0, M, P)
    X = np.empty((T, P), dtype=np.float32)
    a = rng.standard_normal(P).astype(np.float32)
    for t in range(T):
        X[t] = a * r[t, k] + np.float32(0.01) * rng.standard_normal(P, dtype=np.float32)
    return X


class CMDFit:
    params = ([10**5, 10**6, 10**7], BACKENDS)
    param_names = ["P", "backend"]
    timeout = 600

    def setup(self, P, backend):
        require(backend)
        if backend == "numpy" and P > 10**6:
            raise NotImplementedError("the reference holds a (P, M) float64 block: too large here")
        self.X = _trajectory(P, 100, 10)
        self.backend = backend

    def time_fit(self, P, backend):
        fm.cmd.fit(self.X, n_modes=10, n_samples=1000, backend=self.backend)

    def peakmem_fit(self, P, backend):
        fm.cmd.fit(self.X, n_modes=10, n_samples=1000, backend=self.backend)


class CMDOnline:
    """The online update over 100 steps after a 10-step warm-up: no T x P buffer is kept."""

    params = ([10**6, 10**7], BACKENDS)
    param_names = ["P", "backend"]
    timeout = 600

    def setup(self, P, backend):
        require(backend)
        self.warm = _trajectory(P, 10, 10)
        self.step = self.warm[-1].copy()
        self.backend = backend

    def time_online_100_steps(self, P, backend):
        cmd = fm.cmd.OnlineCMD(n_modes=10, warmup=10, n_samples=1000, backend=self.backend)
        for theta in self.warm:
            cmd.update(theta)
        for _ in range(100):
            cmd.update(self.step)
