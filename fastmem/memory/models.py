"""The scaling-law grid's models with trained embeddings (Cabannes, Dohmatob, Bietti, ICLR 2024).

- "learnable": h = [LN](e_x^T W), scores h U^T, with E, U and W all trained;
- "exponential": no W, h = [LN](relu(e_x)), with E and U trained.
(The "matrix" model, W trained with E and U fixed, is :func:`fastmem.train`.)
"""

from dataclasses import dataclass

import numpy as np

from .. import _validate as v
from ..backends import get
from ..specs import ModelKind, ModelOptimizerSpec, RecordSpec, ScheduleKind, TrainSpec
from .optim import SGD, Adam, spec_of
from .train import Record

KINDS = {"learnable": ModelKind.LEARNABLE, "exponential": ModelKind.EXPONENTIAL}


@dataclass
class ModelRun:
    """Final parameters (E, U, W or None), the records and the status ("ok", "diverged", or
    "interrupted" on the ``run`` of the KeyboardInterrupt that Ctrl-C raises) of a model run."""

    E: np.ndarray
    U: np.ndarray
    W: np.ndarray
    steps: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    status: str
    steps_done: int


def train_model(model, E, U, task, optimizer, steps, batch_size=None, seed=0, W=None, layernorm=False,
                lr_scale=None, record=None, tokens=None, backend=None):
    """Train a "learnable" or "exponential" model; E (N, d), U (M, d) and W (d, d) are copied.

    optimizer : fm.SGD(lr) (no momentum or weight decay) or fm.Adam(lr, betas=(0, 0))
    lr_scale : {"E": s, "U": s, "W": s} multipliers of lr per tensor (default 1)
    """
    if model not in KINDS:
        v.fail("model", f"one of {tuple(KINDS)}", repr(model))
    E = v.float_matrix("E", E).copy()
    U = v.float_matrix("U", U, shape=(None, E.shape[1]), dtype=E.dtype).copy()
    if model == "learnable":
        W = np.zeros((E.shape[1],) * 2, dtype=E.dtype) if W is None else \
            v.float_matrix("W", W, shape=(E.shape[1], E.shape[1]), dtype=E.dtype).copy()
    else:
        W = None
    if (E.shape[0], U.shape[0]) != (task.N, task.M):
        v.fail("task", f"N = {E.shape[0]} and M = {U.shape[0]}", f"N = {task.N}, M = {task.M}")
    if isinstance(optimizer, SGD) and (optimizer.momentum or optimizer.weight_decay):
        v.fail("optimizer", "plain SGD (no momentum, no weight decay) for this model", repr(optimizer))
    if isinstance(optimizer, Adam) and optimizer.betas != (0.0, 0.0):
        v.fail("optimizer", "Adam with betas=(0, 0) for this model", repr(optimizer))
    if not isinstance(optimizer, (SGD, Adam)):
        v.fail("optimizer", "fm.SGD or fm.Adam(betas=(0, 0))", repr(optimizer))
    spec = spec_of(optimizer)
    if spec.schedule != ScheduleKind.CONSTANT:
        v.fail("optimizer", "a constant learning rate for this model (it runs no schedule)", repr(optimizer))
    scale = {"E": 1.0, "U": 1.0, "W": 1.0, **(lr_scale or {})}
    lr = {k: float(optimizer.lr * scale[k]) for k in ("E", "U", "W")}
    opt = ModelOptimizerSpec(spec._replace(lr=lr["W"]), lr["E"], lr["U"])
    steps = v.positive_int("steps", steps, allow_zero=True)
    if tokens is not None:
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] != steps:
            v.fail("tokens", f"shape ({steps}, batch_size)", f"shape {tokens.shape}")
        batch_size = tokens.shape[1] if batch_size is None else batch_size
        tokens = v.tokens("tokens", tokens, task.N, shape=(steps, batch_size))
    b = 0 if batch_size is None else v.positive_int("batch_size", batch_size)
    record = Record(steps="last") if record is None else record
    rec_steps = record.resolve(steps)
    R = len(rec_steps)
    rec = RecordSpec(rec_steps, loss=np.full(R, np.nan, E.dtype), accuracy=np.full(R, np.nan, E.dtype))
    tp = TrainSpec(steps, b, v.positive_int("seed", seed, allow_zero=True, below=2**64), layernorm=bool(layernorm))
    be = get(backend, kernel="train_model")
    try:
        status, done, n = be.train_model(KINDS[model], E, U, W, task.p, task.y, task.cdf, tokens, opt, tp, rec)
    except KeyboardInterrupt as exc:  # Ctrl-C between two steps: the parameters and records so far
        done, n = getattr(exc, "fastmem_progress", (0, 0))[:2]
        exc.run = ModelRun(E, U, W, rec_steps[:n], rec.loss[:n], rec.accuracy[:n], "interrupted", int(done))
        raise
    return ModelRun(E, U, W, rec_steps[:n], rec.loss[:n], rec.accuracy[:n],
                    "ok" if status == 0 else "diverged", int(done))
