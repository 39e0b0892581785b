"""The induction-head study's sweep, registered with the sweep runner as "ihead": a model
(d, seed), a task (k fixed triggers, T), the optimiser (lr, momentum, weight decay) and the
trainable set, to a result row (the final losses and the three probes' recall). The W_O^2-only
configurations that differ only in lr run as one group through train_lrs: common batches, one
frozen forward per step for all of them."""

import time

import numpy as np

from ..sweeps import Experiment, register
from ..sweeps.experiment import integer_key, number_key
from .data import InductionHeads
from .model import LOSSES, TRAIN_SETS, TwoLayer
from .probes import PROBES
from .train import Record, train, train_lrs

_NONNEGATIVE = number_key(0)[0]
KEYS = {
    "d": integer_key(1), "lr": number_key(0, strict=True), "seed": integer_key(0), "data_seed": integer_key(0),
    "steps": integer_key(0), "batch": integer_key(1), "T": integer_key(1), "k": integer_key(1),
    "momentum": (lambda x: _NONNEGATIVE(x) and x < 1, "a number in [0, 1)"),
    "weight_decay": number_key(0),
    "train": (lambda x: x in TRAIN_SETS, f"one of {tuple(TRAIN_SETS)}"),
    "loss_rows": (lambda x: x in LOSSES, f"one of {LOSSES}"),  # train's loss=
    "dtype": (lambda x: x in ("float32", "float64"), "'float32' or 'float64'"),
}
# the paper's W_O^2-only runs (docs/transformer.md)
DEFAULTS = {"d": 64, "seed": 0, "data_seed": 0, "steps": 51, "batch": 512, "T": 256, "k": 5, "momentum": 0.0,
            "weight_decay": 1e-4, "train": "wo2", "loss_rows": "head", "dtype": "float32"}
COLUMNS = ("status", "loss", "loss_last10", *(f"recall_{p}" for p in PROBES), "steps_done", "seconds", "message")


def _row(run, steps, seconds):
    ok = run.status == "ok"
    row = {"status": run.status, "steps_done": run.steps_done, "message": "", "seconds": seconds,
           "loss": float(run.loss[-1]) if ok and steps else np.nan,
           "loss_last10": float(run.loss[-10:].mean()) if ok and steps else np.nan}
    for p in PROBES:
        r = run.recall.get(p)
        row[f"recall_{p}"] = float(r[-1]) if ok and r is not None and len(r) else np.nan
    return row


def _trajectory(run):
    traj = {"step": run.steps, "loss": run.loss[np.minimum(run.steps, max(len(run.loss) - 1, 0))]
            if len(run.loss) else np.full(len(run.steps), np.nan)}
    for p, r in run.recall.items():
        traj[f"recall_{p}"] = r
    return traj


def run_group(configs, backend=None, trajectory=0):
    c = configs[0]
    steps = int(c["steps"])
    rec = Record(steps=np.unique(np.linspace(0, steps, trajectory + 1).round().astype(np.int64)) if trajectory
                 else [steps])
    task = InductionHeads(k=int(c["k"]), seq_len=int(c["T"]))
    model = TwoLayer(d=int(c["d"]), seq_len=int(c["T"]), seed=int(c["seed"]), dtype=c["dtype"])
    kw = dict(batch_size=int(c["batch"]), momentum=float(c["momentum"]), weight_decay=float(c["weight_decay"]),
              loss=c["loss_rows"], seed=int(c["data_seed"]), record=rec, backend=backend)
    t0 = time.perf_counter()
    if c["train"] == "wo2":
        runs = train_lrs(model, task, [float(x["lr"]) for x in configs], steps, **kw)
        each = (time.perf_counter() - t0) / len(configs)
        return [(_row(r, steps, each), _trajectory(r) if trajectory else None) for r in runs]
    out = []
    for x in configs:
        t0 = time.perf_counter()
        r = train(model, task, float(x["lr"]), steps, train=x["train"], **kw)
        out.append((_row(r, steps, time.perf_counter() - t0), _trajectory(r) if trajectory else None))
    return out


def group_key(c):
    """W_O^2-only runs that differ only in lr share their frozen forward: one group."""
    return tuple(sorted((k, v) for k, v in c.items() if k != "lr")) if c["train"] == "wo2" else ("alone", id(c))


IHEAD = register(Experiment(
    name="ihead", keys=KEYS, defaults=DEFAULTS, columns=COLUMNS, run_group=run_group, group_key=group_key,
    order_key=lambda c: ((c["d"], c["T"], c["train"]), (c["seed"], c["lr"])),
    cost=lambda c: c["steps"] * c["batch"] * c["T"] * (c["T"] + c["d"]) * c["d"] * (3 if c["train"] == "all" else 1),
    float_keys=("lr", "momentum", "weight_decay"),
    kernels=lambda ax: ("ihead_sample", "ihead_rows_forward", "ihead_loss_grads", "ihead_wo2_grads"), module=__name__))
