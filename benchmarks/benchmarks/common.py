"""Shared set-up of the asv suite: seeded frozen inputs and the backend parameter."""

import time

import numpy as np

import fastmem as fm

BACKENDS = ["cpp", "numba", "numpy"]
ALL_BACKENDS = [*BACKENDS, "cuda"]
NO_RECORD = fm.Record(steps=[], metrics=())


def require(backend, kernel=None):
    """asv skips a benchmark whose setup raises NotImplementedError: an unavailable backend, or
    one that does not run ``kernel`` (fm.backends()'s "lacks")."""
    info = fm.backends()[backend]
    if not info["available"]:
        raise NotImplementedError(f"backend {backend} unavailable: {info['reason']}")
    if kernel in info["lacks"]:
        raise NotImplementedError(f"backend {backend} does not run {kernel}: {info['lacks'][kernel]}")


def synchronize(backend):
    """Wait for queued device work, so that a timing covers it."""
    if backend == "cuda":
        import cupy

        cupy.cuda.get_current_stream().synchronize()


def gaussian_problem(N, M, d, seed=0):
    """float32 E, U, W ~ Normal(0, 1/d) and a uniform task; built in place (no float64 temporaries)."""
    rng = np.random.default_rng(seed)
    scale = np.float32(d ** -0.5)
    E, U, W = (rng.standard_normal((n, d), dtype=np.float32) for n in (N, M, d))
    for a in (E, U, W):
        a *= scale
    return fm.AssociativeMemory(E, U, W=W), fm.Task.uniform(N, M)


def median_seconds(f, repeats=5):
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def sgemm_seconds(m, n, k, repeats=5):
    """A plain float32 GEMM of the given shape through numpy, as the baseline of the ratios."""
    rng = np.random.default_rng(1)
    A = rng.standard_normal((m, k), dtype=np.float32)
    B = rng.standard_normal((k, n), dtype=np.float32)
    return median_seconds(lambda: A @ B, repeats)
