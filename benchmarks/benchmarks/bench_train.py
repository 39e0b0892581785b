"""Multi-step runs in one call (the scaling-law regime and larger memories) and their initial memory."""

import numpy as np

import fastmem as fm

from .common import BACKENDS, NO_RECORD, median_seconds, require


class SGDRun:
    params = ([1, 16, 256], [100, 1000], BACKENDS)
    param_names = ["batch_size", "d", "backend"]
    timeout = 300

    def setup(self, batch_size, d, backend):
        require(backend)
        # 6,400 steps is the published regime; fewer where a run would take seconds
        self.steps = 6400 if backend == "cpp" and d <= 100 else 200
        E, U = fm.embeddings.gaussian(N=100, M=5, d=d, seed=0)
        self.mem, self.task = fm.AssociativeMemory(E, U), fm.Task.zipf(100, 5, 2.0)
        self.batch_size, self.backend = batch_size, backend

    def run(self):
        fm.train(self.mem, self.task, fm.SGD(lr=1.0), self.steps, batch_size=self.batch_size, seed=42,
                 record=NO_RECORD, backend=self.backend)

    def time_sgd_run(self, batch_size, d, backend):
        self.run()

    def track_steps_per_second(self, batch_size, d, backend):
        return self.steps / median_seconds(self.run, 3)

    track_steps_per_second.unit = "steps/s"


class _GridAdam00:
    """The grid's Adam(0, 0) runs at N = 100, M = 5, 10,240 tokens: the set-up both suites share
    (no timed methods here; each subclass times its own run)."""

    params = ([500, 1000], [16, 256], BACKENDS)
    param_names = ["d", "batch_size", "backend"]
    timeout = 300

    def setup(self, d, batch_size, backend):
        require(backend)
        if backend == "numpy":
            raise NotImplementedError("too slow to time here")
        self.E, self.U = fm.embeddings.gaussian(100, 5, d, seed=0)
        self.W = fm.kernels.normal((d, d), seed=0, scale=d**-0.5)
        self.task, self.steps = fm.Task.zipf(100, 5, 2.0), 10240 // batch_size

    def steps_per_second(self):
        return self.steps / median_seconds(self.run, 3)


class Adam00LayerNorm(_GridAdam00):
    """The grid's Adam(0, 0) runs with LayerNorm: one fused pass over W per step (update and
    the next batch's read-outs)."""

    def setup(self, d, batch_size, backend):
        super().setup(d, batch_size, backend)
        self.mem = fm.AssociativeMemory(self.E, self.U, W=self.W, layernorm=True)
        self.opt = fm.Adam(lr=1.0 / d, betas=(0.0, 0.0))
        self.args = dict(batch_size=batch_size, seed=42, record=NO_RECORD, backend=backend)

    def run(self):
        fm.train(self.mem, self.task, self.opt, self.steps, **self.args)

    def time_adam00_layernorm_run(self, d, batch_size, backend):
        self.run()

    def track_steps_per_second(self, d, batch_size, backend):
        return self.steps_per_second()

    track_steps_per_second.unit = "steps/s"


class LearnableAdam00(_GridAdam00):
    """The grid's learnable model (E, U and W trained) with Adam(0, 0): one pass over W per step
    (dE, the W update, and with W of 1 MiB or more the next batch's read-outs)."""

    def setup(self, d, batch_size, backend):
        require(backend, "train_model")
        super().setup(d, batch_size, backend)
        self.opt = fm.Adam(lr=1.0, betas=(0.0, 0.0))
        self.args = dict(batch_size=batch_size, seed=42, W=self.W, lr_scale={"W": 1 / d, "E": d**-0.5, "U": d**-0.5},
                         backend=backend)

    def run(self):
        train_model = fm.models.train_model  # fm.models in every layout asv benchmarks

        train_model("learnable", self.E, self.U, self.task, self.opt, self.steps, **self.args)

    def time_learnable_adam00_run(self, d, batch_size, backend):
        self.run()

    def track_steps_per_second(self, d, batch_size, backend):
        return self.steps_per_second()

    track_steps_per_second.unit = "steps/s"


class NormalInit:
    """A d x d initial memory: fm.kernels.normal's counter-based stream against numpy's generator."""

    params = ([1000, 2000], ["cpp", "numba", "numpy-generator"])
    param_names = ["d", "source"]

    def setup(self, d, source):
        if source != "numpy-generator":
            require(source)

    def time_normal_matrix(self, d, source):
        if source == "numpy-generator":
            (np.random.default_rng(0).standard_normal((d, d), dtype=np.float32)) * np.float32(d**-0.5)
        else:
            fm.kernels.normal((d, d), seed=0, scale=d**-0.5, backend=source)
