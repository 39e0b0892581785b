"""Chunk tasks for the scheduler's tests, importable by the worker processes it starts."""

import os
import signal


def die_on_large_seeds(chunk, log):
    """The chunk's (seed, ntrain) pairs; a chunk holding a seed of 13 or more kills its worker
    process (SIGKILL, as the OOM killer would), one holding seed 7 raises. Each call is logged."""
    seeds = sorted({c["seed"] for c in chunk})
    with open(log, "a") as f:
        f.write(" ".join(map(str, seeds)) + "\n")
    if max(seeds) >= 13:
        os.kill(os.getpid(), signal.SIGKILL)
    if 7 in seeds:
        raise ValueError("seed 7 is refused")
    return [(c["seed"], c["ntrain"]) for c in chunk]
