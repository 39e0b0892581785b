"""Multi-step SGD runs in one call: the scaling-law regime and larger memories."""

from .common import BACKENDS, NO_RECORD, median_seconds, require

import fastmem as fm


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
