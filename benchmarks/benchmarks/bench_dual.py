"""Dual (score-space) against primal: the published-grid regime, N = 100, M = 5, batch 16."""

import fastmem as fm

from .common import BACKENDS, NO_RECORD, median_seconds, require


class DualVsPrimal:
    params = ([10, 100, 1000], ["primal", "dual", "auto"], BACKENDS)
    param_names = ["d", "representation", "backend"]
    timeout = 300

    def setup(self, d, representation, backend):
        require(backend)
        if backend == "numpy" or (representation == "primal" and d == 1000 and backend != "cpp"):
            raise NotImplementedError("too slow to time here")
        E, U = fm.embeddings.gaussian(100, 5, d, seed=0)
        self.mem, self.task = fm.AssociativeMemory(E, U), fm.Task.zipf(100, 5, 2.0)
        self.steps = 640 if representation == "primal" and d == 1000 else 6400
        self.args = dict(batch_size=16, seed=42, record=NO_RECORD, representation=representation, backend=backend)

    def run(self):
        fm.train(self.mem, self.task, fm.SGD(lr=1.0), self.steps, **self.args)

    def time_sgd_run(self, d, representation, backend):
        self.run()

    def track_steps_per_second(self, d, representation, backend):
        return self.steps / median_seconds(self.run, 3)

    track_steps_per_second.unit = "steps/s"


class ProjectedVsPrimal:
    """Adam with betas (0, 0), the grid's other optimizer: V = W U^T against W."""

    params = ([100, 1000], [16, 1024], ["primal", "projected"], BACKENDS)
    param_names = ["d", "batch_size", "representation", "backend"]
    timeout = 300

    def setup(self, d, batch_size, representation, backend):
        require(backend)
        if backend == "numpy":
            raise NotImplementedError("too slow to time here")
        E, U = fm.embeddings.gaussian(100, 5, d, seed=0)
        self.mem, self.task = fm.AssociativeMemory(E, U), fm.Task.zipf(100, 5, 2.0)
        self.opt = fm.Adam(lr=1.0 / d, betas=(0.0, 0.0))
        self.steps = 102400 // batch_size // (10 if d == 1000 else 1)
        self.args = dict(batch_size=batch_size, seed=42, record=NO_RECORD, representation=representation,
                         backend=backend)

    def time_adam00_run(self, d, batch_size, representation, backend):
        fm.train(self.mem, self.task, self.opt, self.steps, **self.args)
