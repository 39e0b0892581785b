"""Training the two-layer transformer on the induction-head task: SGD with momentum and weight
decay as the authors' torch.optim.SGD (coupled L2: d = g + wd W, buf = mu buf + d, W -= lr buf),
online (batch t drawn from the stream at step t).

The W_O^2-only study is fastmem's associative memory exactly (docs/transformer.md (d)): with
everything else frozen, the frozen forward gives each loss row its h1 (the read-out offset) and
its layer-2 attention output a2 (the memory's input), and the step is
``fm.kernels.softmax_xent_grad(H1 + A2 W, W_U, y, 1/n)`` then ``fm.kernels.sgd_rank_update``
with W = W_O2^T: the kernel ihead_wo2_grads runs exactly these on tiles of rows, for every lr of
a sweep in turn while a tile is in cache. ``train_lrs`` runs several learning rates on common
batches, the frozen forward of each step computed once for all of them."""

import numbers
from dataclasses import dataclass, field

import numpy as np

from .. import _validate as v
from ..backends import get
from .data import InductionHeads
from .model import LOSSES, TwoLayer, rows_of, trainable
from .probes import PROBES, probes


@dataclass(frozen=True)
class Record:
    """What a run records besides every step's loss: at ``steps`` ("all", "log", an int k for
    every k steps, or a list of steps in [0, steps]), the margins of ``probes``, and
    ``other_loss`` (the loss at the non-trigger positions, which the head loss does not train).
    ``pairing``: "same" pairs the loss of step t with the probes of W_t; "authors" with those of
    W_{t+1} as birth's log does (their probes run after optimizer.step())."""

    steps: object = "all"
    probes: tuple = PROBES
    other_loss: bool = False
    pairing: str = "same"

    def due(self, steps):
        s = self.steps
        last = steps if self.pairing == "same" else steps - 1
        if isinstance(s, str):
            if s == "all":
                return np.arange(0, last + 1)
            if s == "log":
                return np.unique(np.concatenate([[0], np.geomspace(1, max(last, 1), 50).round(), [last]])).astype(int)
            v.fail("record.steps", "'all', 'log', an int k or a list of steps", repr(s))
        if isinstance(s, numbers.Integral) and not isinstance(s, bool):
            k = v.positive_int("record.steps", s)
            r = np.arange(0, last + 1, k)
            return r if r[-1] == last else np.append(r, last)
        r = np.unique(np.asarray(s, dtype=np.int64))
        if r.size and (r[0] < 0 or r[-1] > last):
            v.fail("record.steps", f"steps in [0, {last}]", f"[{r[0]}, {r[-1]}]")
        return r


@dataclass
class IHeadRun:
    """A run: loss (steps_done,) the batch loss of each step before its update; steps (R,) the
    recorded steps; margins {probe: (R, n)}; recall {probe: (R,)} the fraction of positive
    margins; other_loss (R,) where recorded; model the trained TwoLayer; status "ok",
    "diverged" or "interrupted"."""

    loss: np.ndarray
    steps: np.ndarray
    margins: dict
    recall: dict
    other_loss: object
    model: TwoLayer
    status: str
    steps_done: int
    config: dict = field(default_factory=dict)


class _Recorder:
    def __init__(self, record, steps, task, backend):
        self.record, self.task, self.backend = record, task, backend
        self.due = set(int(s) for s in record.due(steps))
        self.steps, self.margins, self.other = [], {p: [] for p in record.probes}, []

    def __call__(self, t, model, batch):
        if t not in self.due:
            return
        self.steps.append(t)
        for name, m in probes(model, self.task, self.record.probes, self.backend).items():
            self.margins[name].append(m)
        if self.record.other_loss:
            self.other.append(model.loss(batch, "other", self.backend) if (batch.outs == 0).any() else np.nan)

    def run(self, losses, model, status, done, config):
        margins = {k: np.array(m) for k, m in self.margins.items() if m}
        return IHeadRun(np.array(losses, np.float64), np.array(self.steps, np.int64), margins,
                        {k: (m > 0).mean(1) for k, m in margins.items()},
                        np.array(self.other) if self.record.other_loss else None, model, status, done, config)


def _check(model, task, lr, steps, batch_size, momentum, weight_decay, loss, record):
    if not isinstance(model, TwoLayer):
        v.fail("model", "a fm.transformer.TwoLayer", type(model).__name__)
    if not isinstance(task, InductionHeads):
        v.fail("task", "a fm.transformer.InductionHeads", type(task).__name__)
    if (task.V, task.seq_len) != (model.V, model.T):
        v.fail("task", f"V = {model.V} tokens and seq_len = {model.T} (the model's)", f"V = {task.V}, "
               f"seq_len = {task.seq_len}")
    lrs = [v.in_precision("lr", v.positive_float("lr", x), model.dtype)
           for x in np.atleast_1d(np.asarray(lr, dtype=object))]
    steps = v.positive_int("steps", steps, allow_zero=True, below=2**40)
    B = v.positive_int("batch_size", batch_size, below=2**31)
    momentum = v.unit_interval("momentum", momentum)
    weight_decay = v.positive_float("weight_decay", weight_decay, allow_zero=True)
    if loss not in LOSSES:
        v.fail("loss", f"one of {LOSSES}", repr(loss))
    record = Record() if record is None else record
    if not isinstance(record, Record):
        v.fail("record", "a fm.transformer.Record", type(record).__name__)
    bad = [p for p in record.probes if p not in PROBES]
    if bad:
        v.fail("record.probes", f"names among {PROBES}", repr(bad))
    if record.pairing not in ("same", "authors"):
        v.fail("record.pairing", "'same' or 'authors'", repr(record.pairing))
    return lrs, steps, B, momentum, weight_decay, record


@np.errstate(over="ignore", invalid="ignore")  # a diverging run ends as "diverged" at its next loss
def _sgd(W, g, buf, lr, momentum, wd):
    """torch.optim.SGD's update of W in place (buf: the momentum buffer or None)."""
    d = g + wd * W if wd else g
    if momentum:
        if buf[0] is None:
            buf[0] = d.copy()
        else:
            buf[0] *= momentum
            buf[0] += d
        d = buf[0]
    W -= lr * d


def train(model, task, lr, steps, *, batch_size=512, train="wo2", momentum=0.0, weight_decay=1e-4, loss="head",
          seed=0, record=None, backend=None):
    """Train a copy of ``model`` on ``task`` for ``steps`` SGD steps.

    train : "wo2" (W_O^2 alone), "all" (W_K^1, W_K^2, W_O^2) or names among
        ("wE", "WK1", "WK2", "WO2", "WU")
    lr, momentum, weight_decay : torch.optim.SGD's (coupled L2; momentum 0 is the paper's)
    loss : "head" (the in-context targets, the authors' default) or "all" positions
    seed : the data stream's seed: batch t is task.sample(batch_size, seed, step=t)
    record : a fm.transformer.Record (default: every step's probes)

    Returns an IHeadRun. A run whose loss turns NaN/Inf stops with status "diverged" and keeps
    what it recorded; Ctrl-C raises KeyboardInterrupt with ``exc.run``, the run so far.
    """
    names = trainable(train)
    if names == ("WO2",):
        return train_lrs(model, task, [lr], steps, batch_size=batch_size, momentum=momentum,
                         weight_decay=weight_decay, loss=loss, seed=seed, record=record, backend=backend)[0]
    (lr,), steps, B, momentum, wd, record = _check(model, task, lr, steps, batch_size, momentum, weight_decay,
                                                   loss, record)
    model = model.copy()
    config = dict(lr=lr, steps=steps, batch_size=B, train=names, momentum=momentum, weight_decay=wd, loss=loss,
                  seed=seed)
    rec = _Recorder(record, steps, task, backend)
    bufs = {k: [None] for k in names}
    losses, status, t = [], "ok", 0
    try:
        for t in range(steps + 1):
            batch = task.sample(B, seed, t, backend)
            if t == steps:
                if record.pairing == "same":
                    rec(t, model, batch)
                break
            if record.pairing == "same":
                rec(t, model, batch)
            L, grads = model.loss_and_grads(batch, names, loss, backend)
            losses.append(L)
            if not np.isfinite(L):
                status = "diverged"
                break
            for k in names:
                _sgd(getattr(model.weights, k), grads[k], bufs[k], lr, momentum, wd)
            if not all(np.isfinite(getattr(model.weights, k)).all() for k in names):
                status = "diverged"  # the next loss would be NaN: stop with the records so far
                break
            if record.pairing == "authors":
                rec(t, model, batch)
    except KeyboardInterrupt as exc:
        exc.run = rec.run(losses, model, "interrupted", len(losses), config)
        raise
    return rec.run(losses, model, status, len(losses), config)


def train_lrs(model, task, lrs, steps, *, batch_size=512, momentum=0.0, weight_decay=1e-4, loss="head", seed=0,
              record=None, backend=None):
    """The W_O^2-only study at several learning rates on common batches: one IHeadRun per lr,
    each equal to ``train(model, task, lr, ..., train="wo2")``; the frozen forward of each
    step (h1 and a2 at the loss rows) is computed once for all of them."""
    lrs, steps, B, momentum, wd, record = _check(model, task, lrs, steps, batch_size, momentum, weight_decay, loss,
                                                 record)
    forward = get(backend, kernel="ihead_rows_forward").ihead_rows_forward
    memory_grads = get(backend, kernel="ihead_wo2_grads").ihead_wo2_grads
    models = [model.copy() for _ in lrs]
    # the memories' W = W_O2^T, one C-contiguous (runs, d, d) stack; each W_O2 is its transpose view
    Ws = np.ascontiguousarray(np.stack([m.weights.WO2.T for m in models]))
    for m, W in zip(models, Ws):
        m.weights = m.weights._replace(WO2=W.T)
    recs = [_Recorder(record, steps, task, backend) for _ in lrs]
    configs = [dict(lr=lr, steps=steps, batch_size=B, train=("WO2",), momentum=momentum, weight_decay=wd, loss=loss,
                    seed=seed) for lr in lrs]
    losses = [[] for _ in lrs]
    status = ["ok"] * len(lrs)
    bufs = [[None] for _ in lrs]
    w0, d = model.weights, model.d
    try:
        for t in range(steps + 1):
            live = [r for r in range(len(lrs)) if status[r] == "ok"]
            if not live:
                break
            batch = task.sample(B, seed, t, backend)
            for r in live:
                if record.pairing == "same":
                    recs[r](t, models[r], batch)
            if t == steps:
                break
            rows = rows_of(batch.outs, loss)
            n = int(rows.ptr[-1])
            if n == 0:
                for r in live:
                    losses[r].append(np.nan)
                continue
            Hr, A2 = np.empty((n, d), model.dtype), np.empty((n, d), model.dtype)
            forward(w0, batch.z, rows, Hr, A2)
            y = batch.z[:, 1:][np.repeat(np.arange(B), np.diff(rows.ptr)), rows.idx]
            # every live run's memory step on the shared forward: G[j] = A2^T H of run live[j]
            G, L = np.empty((len(live), d, d), model.dtype), np.empty(len(live))
            memory_grads(Hr, A2, w0.WU, y, Ws[live], 1.0 / n, G, L)
            for j, r in enumerate(live):
                losses[r].append(float(L[j]))
                if not np.isfinite(L[j]):
                    status[r] = "diverged"
                    continue
                _sgd(Ws[r], G[j], bufs[r], lrs[r], momentum, wd)
                if not np.isfinite(Ws[r]).all():
                    status[r] = "diverged"
                    continue
                if record.pairing == "authors":
                    recs[r](t, models[r], batch)
    except KeyboardInterrupt as exc:
        exc.run = [rc.run(ls, m, "interrupted", len(ls), c) for rc, ls, m, c in zip(recs, losses, models, configs)]
        if len(lrs) == 1:
            exc.run = exc.run[0]
        raise
    for m, W in zip(models, Ws):
        m.weights = m.weights._replace(WO2=np.ascontiguousarray(W.T))  # each run's own, not a view of the stack
    return [rc.run(ls, m, s, len(ls), c) for rc, ls, m, s, c in zip(recs, losses, models, status, configs)]
