"""Sweep throughput: runs per second of a small grid through fm.sweep."""

import concurrent.futures as cf
import multiprocessing
import shutil
import tempfile

import fastmem as fm

from .common import require

GRID = {"d": [10, 50], "seed": [1, 2], "lr": [1.0, 10.0], "batch_size": [16, 256], "ntrain": [1024, 10240],
        "layernorm": [False, True], "optimizer": ["sgd", "adam"], "model": ["matrix", "learnable", "exponential"]}


class SweepThroughput:
    params = ([1, 2], ["cpp", "numba"])
    param_names = ["workers", "backend"]
    timeout = 600

    def setup(self, workers, backend):
        require(backend, "train_model")  # the grid's learnable and exponential models
        self.n_runs = len(fm.sweeps.expand(GRID))

    def _sweep(self, workers, backend):
        out = tempfile.mkdtemp()
        try:
            with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as ex:
                fm.sweep(GRID, out, executor=ex, quiet=True, backend=backend)
        finally:
            shutil.rmtree(out)

    def time_sweep(self, workers, backend):
        self._sweep(workers, backend)

    def track_runs_per_second(self, workers, backend):
        import time

        t = time.perf_counter()
        self._sweep(workers, backend)
        return self.n_runs / (time.perf_counter() - t)

    track_runs_per_second.unit = "runs/s"
