"""The scaling-law experiment of the associative memory (docs/experiments.md), registered with
the sweep runner as "scaling-law": its grid keys, and one run (or one group of runs that differ
only in ntrain) from a configuration to a result row and its loss/error trajectory.
"""

import json
import time

import numpy as np

from .. import _validate as v
from ..sweeps import grid as g
from ..sweeps.experiment import Experiment, integer_key, number_key, register
from . import embeddings
from .representations import choose
from .kernels import normal
from .associative_memory import AssociativeMemory
from .models import train_model
from .optim import SGD, Adam
from .task import Task
from .train import Record, train

# key: (type check, human description). A grid value may be a scalar or a list.
KEYS = {
    "model": (lambda x: x in ("matrix", "learnable", "exponential"), "'matrix', 'learnable' or 'exponential'"),
    "optimizer": (lambda x: x in ("sgd", "adam"), "'sgd' or 'adam' (Adam with betas (0, 0))"),
    "N": integer_key(1),
    "M": integer_key(2),
    "d": integer_key(1),
    "alpha": number_key(0, description="a Zipf exponent >= 0"),
    "seed": integer_key(0),
    "lr": number_key(0, strict=True),
    "batch_size": integer_key(1),
    "ntrain": integer_key(1),
    "layernorm": (lambda x: isinstance(x, bool), "true or false"),
}
DEFAULTS = {"model": "matrix", "optimizer": "sgd", "N": 100, "M": 5, "alpha": 2.0, "layernorm": False}
EXPERIMENT = "scaling-law"
# The authors' largest published grid, 40,320 runs (examples/scaling_law_grid.toml says the same:
# tests/test_sweep.py checks it)
PUBLISHED_GRID = {"N": 100, "M": 5, "alpha": 2.0, "d": [10, 20, 50, 100, 200, 500, 1000], "seed": list(range(42, 52)),
                  "lr": [0.1, 1.0, 10.0, 100.0], "batch_size": [16, 64, 256, 1024], "ntrain": [1024, 10240, 102400],
                  "layernorm": [False, True], "optimizer": ["sgd", "adam"], "model": ["matrix", "learnable", "exponential"]}
FLOAT_KEYS = ("lr", "alpha")
# the result row after the keys and run_id
RESULTS = ("status", "error", "loss", "steps", "seconds", "representation", "message")


def run_id(config):
    """A stable identifier of a configuration (its JSON, hashed)."""
    return g.run_id(config, FLOAT_KEYS)


def run_one(config, backend=None, trajectory=0):
    """One run of the scaling-law grid (docs/experiments.md): Normal(0, 1/d) inits (W from
    fm.kernels.normal), training tokens drawn once and consumed in consecutive batches
    (ntrain / batch_size steps), Adam with betas (0, 0) at lr / d for W and lr / sqrt(d) for E
    and U; error = sum of p(x) over tokens whose argmax score is wrong. Returns the result row
    (a dict) and, with ``trajectory`` K > 0, the run's (step, loss, error) at about K log-spaced
    steps (else None)."""
    return run_group([config], backend, trajectory)[0]


def run_group(configs, backend=None, trajectory=0):
    """Runs that differ only in ntrain, from one trajectory; [(row, trajectory)] as run_one
    gives each, in the order of ``configs``.

    The tokens come from a counter-based stream, so the run of ntrain tokens is the first
    ntrain / batch_size steps of a longer run of the same seed: one run to the longest, recording
    at every member's own steps, gives each member's records and status exactly. SGD runs that
    the cost model would give another representation at their own length run apart.
    """
    lengths = [c["ntrain"] // c["batch_size"] for c in configs]
    if len({group_key(c) for c in configs}) != 1:
        v.fail("configs", "configurations that differ only in ntrain", [c["ntrain"] for c in configs])
    t0 = time.perf_counter()
    start = _Setup(configs[0], backend)
    out = [None] * len(configs)
    reps = [start.representation(n) for n in lengths]
    for rep in dict.fromkeys(reps):
        members = [i for i, r in enumerate(reps) if r == rep]
        own = [_record(trajectory).resolve(lengths[i]) for i in members]
        run = start.train(max(lengths[i] for i in members), Record(np.unique(np.concatenate(own))), rep)
        for i, pts in zip(members, own):
            out[i] = _member(configs[i], lengths[i], pts, run, rep, trajectory)
    seconds = time.perf_counter() - t0
    for i, n in enumerate(lengths):  # the shared time split by steps; a rerun adds its own
        if out[i] is None:
            out[i] = run_group([configs[i]], backend, trajectory)[0]
        else:
            out[i][0]["seconds"] = seconds * max(n, 1) / sum(max(m, 1) for m in lengths)
    return out


def _record(trajectory):
    return Record(steps="log" if trajectory else "last", num=max(trajectory, 1))


def _member(c, n, pts, run, rep, trajectory):
    """A member's (row, trajectory) from the run of its group, or None where they cannot be
    told apart from it: the run stopped at a record of another member, which a run of n steps
    would not have taken (it would have gone on to its next step)."""
    steps, s = np.asarray(run.steps), int(run.steps_done)
    diverged = run.status != "ok"
    # a non-finite population loss at a record stopped the run; else the loss of a batch
    at_record = diverged and len(steps) > 0 and steps[-1] == s and not np.isfinite(run.loss[-1])
    if diverged and at_record and n > s and s not in pts:
        return None
    keep = np.isin(steps, pts) & (steps <= n)
    loss, error = np.asarray(run.loss)[keep], 1 - np.asarray(run.accuracy)[keep]
    status = "diverged" if diverged and (n > s or (n == s and at_record)) else "ok"
    row = {**c, "run_id": run_id(c), "status": status, "error": float(error[-1]) if keep.any() else np.nan,
           "loss": float(loss[-1]) if keep.any() else np.nan, "steps": min(n, s), "seconds": 0.0,
           "representation": rep, "message": ""}
    traj = {"step": steps[keep], "loss": loss, "error": error} if trajectory else None
    return row, traj


class _Setup:
    """The initial state of a grid configuration: task, embeddings, W and optimizer."""

    def __init__(self, c, backend):
        self.c, self.backend = c, backend
        self.task = Task.zipf(c["N"], c["M"], c["alpha"])
        self.E, self.U = embeddings.gaussian(c["N"], c["M"], c["d"], seed=c["seed"])
        self.W = normal((c["d"], c["d"]), seed=c["seed"], scale=c["d"] ** -0.5, dtype=self.E.dtype,
                                   backend=backend)
        adam = c["optimizer"] == "adam"
        if c["model"] == "matrix":
            self.opt = Adam(lr=c["lr"] / c["d"], betas=(0.0, 0.0)) if adam else SGD(lr=c["lr"])
            self.memory = AssociativeMemory(self.E, self.U, W=self.W, layernorm=c["layernorm"])
        else:
            self.opt = Adam(lr=c["lr"], betas=(0.0, 0.0)) if adam else SGD(lr=c["lr"])
            self.scale = {"W": 1 / c["d"], "E": c["d"] ** -0.5, "U": c["d"] ** -0.5} if adam else None

    def representation(self, steps):
        """What fm.train would take for a run of this many steps (the models: "primal")."""
        c = self.c
        if c["model"] != "matrix":
            return "primal"
        if c["optimizer"] == "adam" and not c["layernorm"]:
            return "projected"  # Adam(0, 0) without LayerNorm: train W U^T (d x M); the grid needs no W
        return choose(self.memory, self.task, self.opt, steps, c["batch_size"], "auto")[0]

    def train(self, steps, record, representation):
        c = self.c
        if c["model"] == "matrix":
            return train(self.memory, self.task, self.opt, steps, batch_size=c["batch_size"], seed=c["seed"],
                            record=record, backend=self.backend, representation=representation)
        return train_model(c["model"], self.E, self.U, self.task, self.opt, steps, batch_size=c["batch_size"],
                           seed=c["seed"], W=self.W, layernorm=c["layernorm"], lr_scale=self.scale, record=record,
                           backend=self.backend)


def _check_axes(ax):
    for b in ax["batch_size"]:
        for n in ax["ntrain"]:
            if n % b:
                v.fail("grid['ntrain']", f"a multiple of batch_size {b}", n)


def kernels(ax):
    """The kernels a grid's runs call: the matrix model's trainers (fm.train picks the
    representation per run) and the trained-embedding models'; W's init (normal_fill) always."""
    names = {"normal_fill"}
    if "matrix" in ax["model"]:
        names |= {"train", "train_dual", "train_projected"}
    if set(ax["model"]) - {"matrix"}:
        names.add("train_model")
    return names


def group_key(c):
    """Runs that differ only in ntrain share one trajectory (run_group)."""
    return json.dumps({**c, "ntrain": 0}, sort_keys=True)


def order_key(c):
    """Runs of the same shapes go to a worker together; within, by seed, lr, batch and ntrain."""
    return (c["model"], c["d"], c["layernorm"], c["optimizer"], c["N"], c["M"]), \
        (c["seed"], c["lr"], c["batch_size"], c["ntrain"])


def cost(c):
    """A run's rough cost for scheduling: steps x d (d + N) multiply-adds."""
    return c["ntrain"] // c["batch_size"] * c["d"] * (c["d"] + c["N"])


SCALING_LAW = register(Experiment(
    name=EXPERIMENT, keys=KEYS, defaults=DEFAULTS, columns=RESULTS, run_group=run_group, group_key=group_key,
    order_key=order_key, cost=cost, check_axes=_check_axes, float_keys=FLOAT_KEYS, kernels=kernels,
    module=__name__))
