"""Many independent small memories in one call (fm.train_many): runs per second on every
backend, the GPU's one-block-per-run kernels included (issue figure: R = 4,096 memories with
d = N = M = 64 and 1,000 GD steps)."""

import numpy as np

import fastmem as fm

from .common import ALL_BACKENDS, require, synchronize


class TrainMany:
    params = ([64, 4096], [16, 64], ALL_BACKENDS)
    param_names = ["runs", "d", "backend"]
    timeout = 600

    def setup(self, runs, d, backend):
        require(backend)
        if backend != "cuda" and runs * d > 64 * 64:
            raise NotImplementedError("CPU backends are timed on the smaller set of runs")
        rng = np.random.default_rng(0)
        N = M = d
        E, U, W = (rng.standard_normal((runs, n, d), dtype=np.float32) / np.float32(np.sqrt(d)) for n in (N, M, d))
        p = np.full(N, 1.0 / N)
        y = np.arange(N) % M
        self.steps = 1000 if backend == "cuda" else 100
        if backend == "cuda":
            import cupy

            E, U, W = (cupy.asarray(a) for a in (E, U, W))
        self.args = (E, U, W, p, y, 1.0)
        self.backend = backend
        self.run()  # warm: JIT, device context

    def run(self):
        fm.train_many(*self.args, steps=self.steps, backend=self.backend)
        synchronize(self.backend)

    def time_train_many(self, runs, d, backend):
        self.run()
