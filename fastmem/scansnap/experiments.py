"""Scan and Snap's sweep, registered with the sweep runner as "scan-snap": a configuration of
the authors' synthetic task (their Dataset2's knobs), the learning rates and a seed, to a result
row (the final loss and, averaged over the facts, the attention's entropy over distinct tokens,
its mass on common tokens, and how many facts attend most to their most likely distinct token)."""

import functools
import time

import numpy as np

from ..sweeps import Experiment, register
from ..sweeps.experiment import integer_key, number_key
from .data import Facts
from .train import INITS, OPTIMIZERS, SIMULATORS, train


_NONNEGATIVE = number_key(0)[0]
KEYS = {
    "num_last": integer_key(1), "num_next_per_last": integer_key(1), "num_common": integer_key(0),
    "num_common_per_last": integer_key(0), "num_unique_per_next": integer_key(1),
    "lr_z": number_key(0, strict=True),  # lr_y = lr_z * ratio: both would be 0
    "ratio": number_key(0, strict=True), "seed": integer_key(0), "steps": integer_key(0), "batch": integer_key(1),
    "L": integer_key(2),
    "init": (lambda x: x in INITS, f"one of {INITS}"),
    "optimizer": (lambda x: x in OPTIMIZERS, f"one of {tuple(OPTIMIZERS)}"),
    "momentum": (lambda x: _NONNEGATIVE(x) and x < 1, "a number in [0, 1)"),
    "simulator": (lambda x: x in SIMULATORS, f"one of {SIMULATORS}"),
    "dtype": (lambda x: x in ("float32", "float64"), "'float32' or 'float64'"),
}
# Syn-Medium as the paper's Fig. 6 runs it (docs/scansnap.md); float32 as PyTorch runs it
DEFAULTS = {"num_next_per_last": 2, "num_common": 10, "num_common_per_last": 0, "num_unique_per_next": 10,
            "steps": 100, "batch": 128, "L": 128, "init": "torch", "optimizer": "sgd", "momentum": 0.9,
            "simulator": "sampled", "dtype": "float32"}
COLUMNS = ("status", "loss", "entropy", "common_mass", "argmax_top", "steps_done", "seconds", "message")
DATA_KEYS = ("num_last", "num_next_per_last", "num_common", "num_common_per_last", "num_unique_per_next")


@functools.lru_cache(maxsize=64)
def _facts(*knobs):
    return Facts.synthetic(*knobs)  # read-only: one per shape and process


def top_distinct(facts):
    """(F,) each fact's distinct token of highest P(l | n)."""
    return np.where(facts.distinct, facts.context, -1.0).argmax(1)


def run_one(c, backend=None, trajectory=0):
    """One configuration: (row, trajectory) where the trajectory (trajectory = K > 0) holds the
    step, loss, mean entropy and mean common-token mass at K + 1 evenly spaced steps."""
    t0 = time.perf_counter()
    facts = _facts(*(int(c[k]) for k in DATA_KEYS))
    steps = int(c["steps"])
    rec = np.unique(np.linspace(0, steps, trajectory + 1).round().astype(np.int64)) if trajectory else [steps]
    run = train(facts, steps, batch=int(c["batch"]), L=int(c["L"]), lr_z=float(c["lr_z"]), ratio=float(c["ratio"]),
                optimizer=c["optimizer"], momentum=float(c["momentum"]), init=c["init"], seed=int(c["seed"]),
                simulator=c["simulator"], dtype=c["dtype"], record_steps=rec, step_loss=False, backend=backend)
    r = run.records
    ok = run.status == "ok" and len(r.steps) and r.steps[-1] == steps
    row = {"status": run.status, "steps_done": run.steps_done, "message": "",
           "loss": float(r.loss[-1]) if ok else np.nan,
           "entropy": float(r.entropy[-1].mean()) if ok else np.nan,
           "common_mass": float(r.common_mass[-1].mean()) if ok else np.nan,
           "argmax_top": float((r.argmax[-1] == top_distinct(facts)).mean()) if ok else np.nan,
           "seconds": time.perf_counter() - t0}
    traj = None
    if trajectory:
        traj = {"step": r.steps, "loss": r.loss, "entropy": r.entropy.mean(1), "common_mass": r.common_mass.mean(1)}
    return row, traj


def run_group(configs, backend=None, trajectory=0):
    return [run_one(c, backend, trajectory) for c in configs]


def cost(c):
    M = c["num_common"] + c["num_last"] * (c["num_common_per_last"] + c["num_next_per_last"] * (
        c["num_unique_per_next"] + 1) + 1)
    return c["steps"] * (c["batch"] * (c["L"] + M) if c["simulator"] == "sampled" else M * M)


SCAN_SNAP = register(Experiment(
    name="scan-snap", keys=KEYS, defaults=DEFAULTS, columns=COLUMNS, run_group=run_group,
    order_key=lambda c: (tuple(c[k] for k in DATA_KEYS), (c["lr_z"], c["ratio"], c["seed"])),
    cost=cost, float_keys=("lr_z", "ratio", "momentum"), kernels=lambda ax: ("scansnap_train",), module=__name__))
