"""The compiled core's CPU levels side by side, in one process, interleaved.

    python benchmarks/cpu_levels.py [--repeats 7]

Loads every fastmem._core_<level> module built here that this CPU runs (baseline, avx2,
avx512, and native where a FASTMEM_NATIVE=ON build's module was put beside them), points
the cpp backend at each in turn, and times the workloads whose kernels are vectorised by
hand (simd.hpp) or by the compiler: medians, and ratios to the first level's median.
"""

import argparse
import importlib
import statistics
import time

import numpy as np

import fastmem as fm
from fastmem import _core
from fastmem.backends import cpp
from fastmem.memory.models import train_model


def _grid_run(model, d, optimizer, layernorm, batch=16, ntrain=2**14):
    c = {"model": model, "optimizer": optimizer, "N": 100, "M": 5, "d": d, "alpha": 2.0, "seed": 1, "lr": 0.1,
         "batch_size": batch, "ntrain": ntrain, "layernorm": layernorm}
    from fastmem.sweeps import run_one

    return lambda: run_one(c, backend="cpp")


def _gd_step(n=1024):
    E, U = fm.embeddings.gaussian(n, n, n, seed=0)
    W = np.zeros((n, n), np.float32)
    rng = np.random.default_rng(0)
    x, y = np.arange(n), rng.integers(0, n, n)
    return lambda: fm.sgd_step(W, E, U, x, y, 0.1, backend="cpp")


def _sgd(d, rep):
    task = fm.Task.zipf(100, 5, 2.0)
    E, U = fm.embeddings.gaussian(100, 5, d, seed=0)
    mem = fm.AssociativeMemory(E, U)
    return lambda: fm.train(mem, task, fm.SGD(lr=1.0), 6400, batch_size=16, seed=42, backend="cpp",
                            representation=rep, record=fm.Record("last"))


def _learnable(d):
    task = fm.Task.zipf(100, 5, 2.0)
    E, U = fm.embeddings.gaussian(100, 5, d, seed=0)
    W = fm.kernels.normal((d, d), seed=1, scale=d ** -0.5)
    return lambda: train_model("learnable", E, U, task, fm.Adam(lr=0.1, betas=(0, 0)), 1000, batch_size=16, seed=1,
                               W=W, record=fm.Record("last"), backend="cpp",
                               lr_scale={"W": 1 / d, "E": d ** -0.5, "U": d ** -0.5})


WORKLOADS = {
    "matrix Adam(0,0) projected d=1000, 1024 steps": _grid_run("matrix", 1000, "adam", False),
    "matrix Adam(0,0) LayerNorm d=1000, 1024 steps": _grid_run("matrix", 1000, "adam", True),
    "learnable Adam(0,0) d=1000, 1000 steps": _learnable(1000),
    "SGD primal d=1000, 6400 steps": _sgd(1000, "primal"),
    "SGD dual d=1000, 6400 steps": _sgd(1000, "dual"),
    "GD step N=M=d=1024": _gd_step(),
    "normal 10^7 deviates": lambda: fm.kernels.normal(10**7, seed=3, backend="cpp"),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args(argv)
    levels = [lv for lv in _core.LEVELS if _core._built(lv) and _core.cpu_runs(lv)]
    mods = {lv: importlib.import_module(f"fastmem._core_{lv}") for lv in levels}
    flags = {lv: mods[lv].info()["cxx_flags"].split()[-1] for lv in levels}
    print("levels: " + ", ".join(f"{lv} ({flags[lv]})" for lv in levels))
    for name, fn in WORKLOADS.items():
        times = {lv: [] for lv in levels}
        for lv in levels:  # warm-up
            cpp._core = mods[lv]
            fn()
        for _ in range(a.repeats):
            for lv in levels:
                cpp._core = mods[lv]
                t0 = time.perf_counter()
                fn()
                times[lv].append(time.perf_counter() - t0)
        med = {lv: statistics.median(t) for lv, t in times.items()}
        base = med[levels[0]]
        print(f"{name:<48}" + "  ".join(f"{lv} {med[lv] * 1e3:8.2f} ms ({med[lv] / base:4.2f}x)" for lv in levels))
    cpp._core = _core


if __name__ == "__main__":
    main()
