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
