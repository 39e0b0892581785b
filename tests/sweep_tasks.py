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


# A toy experiment for the runner's tests: any experiment is a function from a configuration to
# a result row (here the product of two keys, and a trajectory of its powers).
def _toy_run_group(configs, backend=None, trajectory=0):
    import numpy as np

    out = []
    for c in configs:
        if c["a"] == 13:
            raise ValueError("13 is refused")
        value = c["a"] * c["b"]
        traj = {"step": np.arange(trajectory), "power": value ** np.arange(trajectory)} if trajectory else None
        out.append(({"status": "ok", "value": float(value), "message": ""}, traj))
    return out


def _register_toy():
    from fastmem.sweeps import Experiment, register

    is_int = (lambda x: isinstance(x, int) and not isinstance(x, bool), "an integer")
    return register(Experiment(name="toy", keys={"a": is_int, "b": is_int}, defaults={"b": 1},
                               columns=("status", "value", "message"), run_group=_toy_run_group, module=__name__))


TOY = _register_toy()
